//! Rooms on packets and topics: a packet `1 JOIN {room}` subscribes the
//! session to the room, `2 SAY {text}` publishes the text to it (one shared
//! buffer for every member, on every worker), and a thread announces the
//! time to the "news" room every second.
//!
//!     cargo run -p iocore --example rooms [ADDR]
use std::time::Duration;

use iocore::packet::{self, PacketHandler, Packets};
use iocore::{CloseReason, Server, Session};

const JOIN: u16 = 1;
const SAY: u16 = 2;
const HEARD: u16 = 3;

#[derive(Default)]
struct Member {
    room: Option<String>,
}

impl PacketHandler for Member {
    fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
        let Ok(text) = std::str::from_utf8(body) else {
            return s.close_with(CloseReason::protocol("text is not UTF-8"));
        };
        match (id, &self.room) {
            (JOIN, _) => {
                if let Some(old) = self.room.replace(text.to_string()) {
                    s.unsubscribe(&old);
                }
                s.subscribe(text);
            }
            (SAY, Some(room)) => s.publish(room, packet::encode(HEARD, body).expect("fits")),
            (SAY, None) => {}
            _ => s.close_with(CloseReason::protocol(format!("unknown packet {id}"))),
        }
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
    let server = Server::builder()
        .addr(addr)
        .start(|| Packets::new(Member::default()))?;
    println!("rooms on {}", server.local_addr());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        server.publish("news", packet::encode(HEARD, utc_time().as_bytes())?)?;
    }
}

/// The time of day, UTC: "14:03:27 UTC".
fn utc_time() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02} UTC", day / 3600, day / 60 % 60, day % 60)
}
