//! The overlapped seed's client on iocore: connects, sends "Hello World"
//! five times, prints each echo, and closes once all came back.
//!
//!     cargo run -p iocore --example client [ADDR]
//!
//! Run `cargo run -p iocore --example echo` (or `iocore serve`) first.
use std::sync::mpsc;
use std::time::Duration;

use iocore::{Client, CloseReason, Handler, Session};

const MESSAGE: &[u8] = b"Hello World\n";
const COUNT: usize = 5;

struct Hello {
    received: usize,
    done: mpsc::Sender<CloseReason>,
}

impl Handler for Hello {
    fn on_connected(&mut self, session: &mut Session<'_>) {
        println!("connected to {} as {}", session.peer_addr(), session.id());
        for _ in 0..COUNT {
            let _ = session.send(iocore::Bytes::from_static(MESSAGE));
        }
    }

    fn on_recv(&mut self, session: &mut Session<'_>, data: &[u8]) -> usize {
        print!("{}", String::from_utf8_lossy(data));
        self.received += data.len();
        if self.received >= MESSAGE.len() * COUNT {
            session.close(); // FIN after everything queued is sent
        }
        data.len()
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        let _ = self.done.send(reason);
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7777".into());
    let addr = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an address (e.g. 127.0.0.1:7777)"))?;
    let client = Client::builder().start::<Hello>()?;
    let (done, ended) = mpsc::channel();
    client.connect(addr, move || Hello { received: 0, done })?;
    let reason = ended
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "no answer within 10 s")?;
    client.shutdown(Duration::from_secs(1))?;
    match reason {
        // Our own close, once every echo came back.
        CloseReason::LocalClose => {
            println!("done: every echo came back");
            Ok(())
        }
        other => Err(format!("the session ended early: {other}").into()),
    }
}
