//! TCP keepalive: with the option, the kernel runs a keepalive timer on
//! every session's socket, server and client side (read from
//! `/proc/net/tcp`, Linux); without it, none.
#![cfg(target_os = "linux")]

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use iocore::{Client, EngineKind, Keepalive};
use iocore_testkit::*;

/// The timer of the IPv4 socket `local` → `remote` in `/proc/net/tcp`:
/// its kind (`tr`: 2 is keepalive) and when it fires, in seconds.
fn timer(local: SocketAddr, remote: SocketAddr) -> Option<(u8, f64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[1] != local || f[2] != remote {
            return None;
        }
        let (tr, when) = f[5].split_once(':').unwrap();
        let ticks = u64::from_str_radix(when, 16).unwrap();
        Some((tr.parse().unwrap(), ticks as f64 / 100.0))
    })
}

/// The server's and a client's session sockets run the keepalive timer,
/// due within the idle time.
fn keepalive_runs_on_server_and_client_sockets(engine: EngineKind) {
    let idle = Duration::from_secs(30);
    let keepalive = Some(Keepalive::after(idle));
    let server = server(engine).tcp_keepalive(keepalive).start(|| Echo).unwrap();
    let peer = connect(server.local_addr());
    let me = peer.local_addr().unwrap();
    wait_until("server socket accepted", || server.stats().accepted == 1);
    let (tr, due) = timer(server.local_addr(), me).expect("the server's socket is listed");
    assert_eq!(tr, 2, "keepalive timer on the server's socket");
    assert!(due > 20.0 && due <= 30.0, "due in {due} s");

    // Without the option: no timer.
    let plain = iocore_testkit::server(engine).start(|| Echo).unwrap();
    let peer2 = connect(plain.local_addr());
    wait_until("accepted", || plain.stats().accepted == 1);
    let (tr, _) = timer(plain.local_addr(), peer2.local_addr().unwrap()).unwrap();
    assert_eq!(tr, 0, "no keepalive by default");

    // A client's outbound session.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = Client::builder()
        .engine(engine)
        .tcp_keepalive(keepalive)
        .start::<Echo>()
        .unwrap();
    client.connect(listener.local_addr().unwrap(), || Echo).unwrap();
    let (accepted, client_addr) = listener.accept().unwrap();
    wait_until("client connected", || client.stats().connected == 1);
    let (tr, due) = timer(client_addr, listener.local_addr().unwrap()).unwrap();
    assert_eq!(tr, 2, "keepalive timer on the client's socket");
    assert!(due > 20.0 && due <= 30.0, "due in {due} s");
    drop(accepted);
    drop((peer, peer2));
}

engine_suite!(keepalive_runs_on_server_and_client_sockets);
