//! monoio echo server (io_uring driver), single-threaded, one task per
//! connection with owned-buffer read / write_all — as monoio's docs show.
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

#[monoio::main(driver = "iouring", entries = 1024)]
async fn main() {
    let listener = monoio::net::TcpListener::bind(iocore_peers::listen_addr()).unwrap();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        monoio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            loop {
                let (res, b) = stream.read(buf).await;
                buf = b;
                match res {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let (res, b) = stream.write_all(buf).await;
                buf = b;
                if res.is_err() {
                    return;
                }
                buf.clear();
            }
        });
    }
}
