//! tokio echo server, single-threaded (current_thread), one task per
//! connection with read / write_all — the way tokio's docs show it.
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    iocore_peers::accept_loop(|mut stream, _| async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if stream.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
}
