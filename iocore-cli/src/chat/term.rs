//! `iocore chat`: a terminal client for people. It joins a room, sends
//! each line typed as a SAY and prints what arrives:
//!
//! ```text
//! joined lobby (2 members)
//! [w0#12.1] hello
//! ```
//!
//! `/join ROOM` changes room, `/leave` leaves it, `/quit` (or end of input,
//! Ctrl-D) leaves the chat. The session runs on an iocore client worker;
//! the lines read here reach it through `ClientHandle::send`.

use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use iocore::packet::{PacketHandler, Packets, MAX_PACKET};
use iocore::{Client, CloseReason, EngineKind, Session, SessionId};

use super::protocol::{self, FromServer};

/// What the terminal client connects to.
#[derive(Clone, Debug)]
pub struct TermOptions {
    /// The chat server.
    pub addr: SocketAddr,
    /// The room to join first.
    pub room: String,
    /// I/O model of the client.
    pub engine: EngineKind,
}

enum Event {
    Connected(SessionId),
    Line(String),
    EndOfInput,
    Ended(CloseReason),
}

/// The session's side: prints what the server sends.
struct Term {
    room: String,
    events: mpsc::Sender<Event>,
}

impl PacketHandler for Term {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        let _ = s.send(protocol::join(&self.room));
        let _ = self.events.send(Event::Connected(s.id()));
    }

    fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
        match protocol::from_server(id, body) {
            Ok(FromServer::Joined { members, room }) => {
                self.room = room.to_string();
                println!("joined {room} ({members} members)");
            }
            Ok(FromServer::Msg { from, text }) => println!("[{}] {text}", SessionId::from_u64(from)),
            Ok(FromServer::Left) => println!("left {}", self.room),
            Ok(FromServer::Error(text)) => println!("error: {text}"),
            Err(e) => {
                eprintln!("bad packet from the server: {e}");
                s.close_with(CloseReason::protocol(e));
            }
        }
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        let _ = self.events.send(Event::Ended(reason));
    }
}

/// Runs the client until the input ends, `/quit`, or the server closes;
/// an error if it could not connect or the server ended the session.
pub fn run(opts: &TermOptions, input: impl BufRead + Send + 'static) -> io::Result<()> {
    let client = Client::builder().engine(opts.engine).start::<Packets<Term>>()?;
    let (tx, events) = mpsc::channel();
    let (room, to_session) = (opts.room.clone(), tx.clone());
    client.connect(opts.addr, move || {
        Packets::new(Term {
            room,
            events: to_session,
        })
        .max_packet(MAX_PACKET)
    })?;
    let id = match events.recv() {
        Ok(Event::Connected(id)) => id,
        Ok(Event::Ended(reason)) => {
            return Err(io::Error::other(format!(
                "cannot chat at {}: {reason}",
                opts.addr
            )))
        }
        _ => return Err(io::Error::other("the client stopped")),
    };
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            if tx.send(Event::Line(line)).is_err() {
                break;
            }
        }
        let _ = tx.send(Event::EndOfInput);
    });
    let mut quitting = false;
    loop {
        match events.recv() {
            Ok(Event::Line(line)) => {
                let line = line.trim_end();
                let packet = match line.split_once(' ') {
                    _ if line.is_empty() => continue,
                    Some(("/join", room)) => protocol::join(room.trim()),
                    _ if line == "/leave" => protocol::leave(),
                    _ if line == "/quit" => {
                        quitting = true;
                        client.close(id)?;
                        continue;
                    }
                    _ => protocol::say(line),
                };
                client.send(id, packet)?;
            }
            Ok(Event::EndOfInput) if !quitting => {
                quitting = true;
                client.close(id)?;
            }
            Ok(Event::Ended(reason)) => {
                client.shutdown(Duration::from_secs(1))?;
                return match reason {
                    CloseReason::LocalClose if quitting => Ok(()),
                    other => Err(io::Error::other(format!("the server ended the chat: {other}"))),
                };
            }
            Ok(_) => {}
            Err(_) => return Err(io::Error::other("the client stopped")),
        }
    }
}
