//! compio echo server (io_uring), single-threaded, one task per connection
//! with owned-buffer read / write_all — as compio's docs show.
use compio::buf::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};

#[compio::main]
async fn main() {
    let listener = compio::net::TcpListener::bind(iocore_peers::listen_addr())
        .await
        .unwrap();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        compio::runtime::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            loop {
                let BufResult(res, b) = stream.read(buf).await;
                buf = b;
                match res {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let BufResult(res, b) = stream.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    return;
                }
                buf.clear();
            }
        })
        .detach();
    }
}
