//! The WSAEventSelect seed's echo server on iocore: every byte comes back.
//!
//!     cargo run -p iocore --example echo [ADDR] [ENGINE]
//!
//! Try it with `nc 127.0.0.1 7777`, or `cargo run -p iocore --example client`.
use iocore::{EngineKind, Handler, Server, Session};

struct Echo;

impl Handler for Echo {
    fn on_recv(&mut self, session: &mut Session<'_>, data: &[u8]) -> usize {
        let _ = session.send_copy(data); // a refused send has closed the session
        data.len() // consumed everything
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
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7777".into());
    let addr = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an address (e.g. 127.0.0.1:7777)"))?;
    let engine: EngineKind = args.next().unwrap_or_else(|| "auto".into()).parse()?;
    let server = Server::builder().addr(addr).engine(engine).start(|| Echo)?;
    println!(
        "echo on {} with the {} engine",
        server.local_addr(),
        server.engine()
    );
    server.join()?; // serves until the process is stopped
    Ok(())
}
