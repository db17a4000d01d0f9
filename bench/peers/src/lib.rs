//! Shared bits of the peer echo servers: the listen address from argv.

/// The address to listen on: the first argument, else 127.0.0.1:7777.
/// Only loopback addresses are accepted: these servers exist to be
/// measured on this machine.
pub fn listen_addr() -> std::net::SocketAddr {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7777".into())
        .parse()
        .expect("usage: peer-<name> [127.0.0.1:PORT]");
    assert!(addr.ip().is_loopback(), "peer servers listen on loopback only");
    addr
}
