//! tokio echo server, single-threaded (current_thread), one task per
//! connection with read / write_all — the way tokio's docs show it.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    iocore_peers::accept_loop(|stream, _| iocore_peers::echo(stream)).await;
}
