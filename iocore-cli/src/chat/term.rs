//! `iocore chat`: a terminal client for people. It joins a room, sends
//! each line typed as a SAY and prints what arrives:
//!
//! ```text
//! joined lobby (2 members)
//! [w0#12.1] hello
//! ```
//!
//! `/join ROOM` changes room, `/leave` leaves it, `/quit` (or end of input,
//! Ctrl-D) leaves the chat, `/help` lists them; a line that starts with
//! `//` says the rest with one `/`. What the server would refuse (a room
//! name of 0 or over 64 bytes, a line longer than the server takes) is
//! refused here, with the reason; when the server closes the chat it says
//! why (its last ERROR). The session runs on an iocore client worker; the
//! lines read here reach it through `ClientHandle::send`.

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
    /// Joined a room: the longest text the server takes.
    Joined(usize),
    Line(String),
    EndOfInput,
    /// The session ended; the server's last ERROR, if it sent one.
    Ended(CloseReason, Option<String>),
}

/// The session's side: prints what the server sends.
struct Term {
    room: String,
    events: mpsc::Sender<Event>,
    last_error: Option<String>,
}

/// The commands, for `/help` and unknown ones.
const COMMANDS: &str = "/join ROOM, /leave, /quit, /help (a line starting with // says it with one /)";

/// A room name the server takes: 1 to 64 bytes.
pub fn check_room(room: &str) -> Result<(), String> {
    match room.len() {
        0 => Err("a room needs a name".into()),
        n if n > protocol::MAX_ROOM => Err(format!(
            "a room name is at most {} bytes; '{room}' is {n}",
            protocol::MAX_ROOM
        )),
        _ => Ok(()),
    }
}

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// Nothing (an empty line).
    Nothing,
    /// Say this text.
    Say(&'a str),
    /// Join this room.
    Join(&'a str),
    /// Leave the room.
    Leave,
    /// Leave the chat.
    Quit,
    /// Show the commands.
    Help,
}

/// Reads a typed line; the error says what is wrong with it (a text over
/// `max_text` bytes, an unknown command, a bad room name).
pub fn parse_line(line: &str, max_text: usize) -> Result<Input<'_>, String> {
    let line = line.trim_end();
    let text = match line.strip_prefix('/') {
        None if line.is_empty() => return Ok(Input::Nothing),
        None => line,
        Some(rest) if rest.starts_with('/') => rest,
        Some(command) => {
            let (name, arg) = command.split_once(' ').unwrap_or((command, ""));
            let arg = arg.trim();
            return match name {
                "join" if arg.is_empty() => Err("usage: /join ROOM".into()),
                "join" => check_room(arg).map(|()| Input::Join(arg)),
                "leave" => Ok(Input::Leave),
                "quit" => Ok(Input::Quit),
                "help" => Ok(Input::Help),
                other => Err(format!("unknown command /{other}: {COMMANDS}")),
            };
        }
    };
    if text.len() > max_text {
        return Err(format!(
            "not sent: {} bytes, and the server takes at most {max_text} in a line",
            text.len()
        ));
    }
    Ok(Input::Say(text))
}

impl PacketHandler for Term {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        let _ = s.send(protocol::join(&self.room));
        let _ = self.events.send(Event::Connected(s.id()));
    }

    fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
        match protocol::from_server(id, body) {
            Ok(FromServer::Joined {
                members,
                max_text,
                room,
            }) => {
                self.room = room.to_string();
                println!("joined {room} ({members} members)");
                let _ = self.events.send(Event::Joined(max_text as usize));
            }
            Ok(FromServer::Msg { from, text }) => println!("[{}] {text}", SessionId::from_u64(from)),
            Ok(FromServer::Left) => println!("left {}", self.room),
            Ok(FromServer::Error(text)) => {
                println!("error: {text}");
                self.last_error = Some(text.to_string());
            }
            Err(e) => {
                eprintln!("bad packet from the server: {e}");
                s.close_with(CloseReason::protocol(e));
            }
        }
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        let _ = self.events.send(Event::Ended(reason, self.last_error.take()));
    }
}

/// Runs the client until the input ends, `/quit`, or the server closes;
/// an error if it could not connect or the server ended the session.
pub fn run(opts: &TermOptions, input: impl BufRead + Send + 'static) -> io::Result<()> {
    check_room(&opts.room).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let client = Client::builder().engine(opts.engine).start::<Packets<Term>>()?;
    let (tx, events) = mpsc::channel();
    let (room, to_session) = (opts.room.clone(), tx.clone());
    client.connect_later(opts.addr, move || {
        Packets::new(Term {
            room,
            events: to_session,
            last_error: None,
        })
        .max_packet(MAX_PACKET)
    })?;
    let id = match events.recv() {
        Ok(Event::Connected(id)) => id,
        Ok(Event::Ended(reason, _)) => {
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
    // Until a JOINED says what the server takes: what fits a packet.
    let mut max_text = MAX_PACKET - iocore::packet::HEADER - protocol::MSG_OVERHEAD;
    loop {
        match events.recv() {
            Ok(Event::Joined(limit)) => max_text = limit,
            Ok(Event::Line(line)) => {
                let packet = match parse_line(&line, max_text) {
                    Err(why) => {
                        println!("{why}");
                        continue;
                    }
                    Ok(Input::Nothing) => continue,
                    Ok(Input::Help) => {
                        println!("{COMMANDS}");
                        continue;
                    }
                    Ok(Input::Quit) => {
                        quitting = true;
                        client.close(id)?;
                        continue;
                    }
                    Ok(Input::Say(text)) => protocol::say(text),
                    Ok(Input::Join(room)) => protocol::join(room),
                    Ok(Input::Leave) => protocol::leave(),
                };
                client.send(id, packet)?;
            }
            Ok(Event::EndOfInput) if !quitting => {
                quitting = true;
                client.close(id)?;
            }
            Ok(Event::Ended(reason, last_error)) => {
                client.shutdown(Duration::from_secs(1))?;
                return match (reason, last_error) {
                    (CloseReason::LocalClose, _) if quitting => Ok(()),
                    (CloseReason::PeerClosed, Some(why)) => {
                        Err(io::Error::other(format!("the server ended the chat: {why}")))
                    }
                    (other, _) => Err(io::Error::other(format!("the server ended the chat: {other}"))),
                };
            }
            Ok(_) => {}
            Err(_) => return Err(io::Error::other("the client stopped")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines_are_checked_before_they_are_sent() {
        assert_eq!(parse_line("hello", 10), Ok(Input::Say("hello")));
        assert_eq!(parse_line("", 10), Ok(Input::Nothing));
        assert_eq!(parse_line("//slash", 10), Ok(Input::Say("/slash")));
        assert_eq!(parse_line("/join kitchen ", 10), Ok(Input::Join("kitchen")));
        assert_eq!(parse_line("/leave", 10), Ok(Input::Leave));
        assert_eq!(parse_line("/quit", 10), Ok(Input::Quit));
        assert_eq!(parse_line("/join", 10), Err("usage: /join ROOM".into()));
        assert!(parse_line(&format!("/join {}", "r".repeat(65)), 10)
            .unwrap_err()
            .contains("at most 64 bytes"));
        assert!(parse_line("/jion x", 10)
            .unwrap_err()
            .starts_with("unknown command /jion"));
        assert!(parse_line("eleven byte", 10).unwrap_err().contains("at most 10"));
        assert_eq!(parse_line(&"x".repeat(10), 10), Ok(Input::Say("xxxxxxxxxx")));
    }
}
