//! Choosing the io_uring engine probes the kernel with a throwaway ring.
//! That ring must leave no io_uring state behind in the caller's thread:
//! the kernel tears a ring down asynchronously, and task work it queues
//! on a thread that used the ring interrupts that thread's next blocking
//! call — a socket read with a timeout then fails with EINTR in the
//! application's own code, as `iocore` once did to a test right after
//! `Server::start`.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use iocore::EngineKind;

#[test]
fn probing_io_uring_leaves_the_calling_thread_alone() {
    if let Err(why) = EngineKind::Uring.resolve() {
        panic!("io_uring cannot run on this machine ({why}): this test cannot pass here");
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    for round in 0..20 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b"x").unwrap();
        });
        EngineKind::Uring.resolve().unwrap();
        let mut byte = [0u8; 1];
        let got = c.read(&mut byte);
        assert!(
            matches!(got, Ok(1)),
            "round {round}: a blocking read after the probe: {got:?}"
        );
        writer.join().unwrap();
    }
}
