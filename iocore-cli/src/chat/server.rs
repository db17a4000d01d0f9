//! The chat server (`iocore serve --app chat`): each room is a topic, each
//! message a packet. A SAY is published once to the room's topic — one
//! buffer, shared by every member's send queue on every worker.
//!
//! With a Redis bridge (`serve --redis`) rooms span the server's
//! instances; JOINED is sent once the room's subscription reaches the
//! other instances too (`Session::topic_ready`), so that a member who has
//! it receives everything said in the room from then on, wherever said.
//! Its member count is this instance's.
//!
//! Coalesced (`serve --app chat --coalesce 50ms`): each chat room is an
//! [`iocore::room::Room`] instead of a topic; what its members say during
//! a tick is gathered into one buffer and sent to every member at the
//! tick's end: one write per member per tick however many messages, for
//! up to one tick of added latency. (Rooms then stay on this instance:
//! not with `--redis`.)
//!
//! A SAY outside a room gets an ERROR; anything a client could not have
//! meant (an unknown packet id, text that is not UTF-8, a room name not 1
//! to 64 bytes long, text too long to relay) closes that session with a
//! protocol-violation reason.

use std::borrow::Cow;
use std::time::Duration;

use iocore::packet::{PacketHandler, Packets, HEADER};
use iocore::room::{Room, RoomCx, RoomRef, Rooms};
use iocore::{Bytes, CloseReason, Session, SessionId};

use super::protocol::{self, MAX_ROOM, MSG_OVERHEAD};

/// Topics of rooms are named `room:<name>`.
const ROOM: &str = "room:";

/// One chat member's session.
pub struct ChatSession {
    /// The topic of the room joined, if any.
    topic: Option<Box<str>>,
    /// Longest text a MSG can relay within the packet limit.
    max_text: usize,
    /// JOINED is owed once the room's subscription is in place everywhere.
    joined_owed: bool,
    /// Coalesced: the rooms, and the room joined with this session's id.
    rooms: Option<Rooms<ChatRoom>>,
    room: Option<(RoomRef<ChatMsg>, SessionId)>,
}

/// A chat session for packets of at most `max_packet` bytes.
pub fn handler(max_packet: usize) -> Packets<ChatSession> {
    let session = ChatSession {
        topic: None,
        max_text: max_packet - HEADER - MSG_OVERHEAD,
        joined_owed: false,
        rooms: None,
        room: None,
    };
    Packets::new(session).max_packet(max_packet)
}

/// A chat session whose rooms are `rooms` (coalesced: see [`rooms`]).
pub fn coalesced_handler(max_packet: usize, rooms: &Rooms<ChatRoom>) -> Packets<ChatSession> {
    let mut h = handler(max_packet);
    h.inner_mut().rooms = Some(rooms.clone());
    h
}

/// The rooms of a coalescing chat server: each gathers what is said in a
/// tick of `tick` and sends it to every member at the tick's end.
pub fn rooms(max_packet: usize, tick: Duration) -> Rooms<ChatRoom> {
    let max_text = (max_packet - HEADER - MSG_OVERHEAD) as u32;
    Rooms::new(move |_| ChatRoom { max_text, tick })
}

/// A coalescing chat room: the members are the room's; each MSG (already
/// encoded by the sayer's session) goes into the tick's buffer.
pub struct ChatRoom {
    max_text: u32,
    tick: Duration,
}

/// What a session posts to its coalesced room.
pub enum ChatMsg {
    /// An encoded MSG for every member.
    Say(Bytes),
    /// The poster asked to leave (LEAVE): it gets LEFT after what it was
    /// sent as a member (its leave follows).
    Leaving,
}

impl Room for ChatRoom {
    type Msg = ChatMsg;

    fn on_join(&mut self, cx: &mut RoomCx<'_, ChatMsg>, member: SessionId) {
        if cx.members().len() == 1 {
            cx.set_tick_spread(self.tick);
        }
        let members = cx.members().len() as u32;
        let joined = protocol::joined(members, self.max_text, cx.key());
        cx.send(member, joined);
    }

    fn on_leave(&mut self, cx: &mut RoomCx<'_, ChatMsg>, _: SessionId) {
        if cx.members().is_empty() {
            cx.stop_tick();
        }
    }

    fn on_message(&mut self, cx: &mut RoomCx<'_, ChatMsg>, from: Option<SessionId>, msg: ChatMsg) {
        match (msg, from) {
            (ChatMsg::Say(msg), _) => cx.broadcast_at_tick(&msg),
            (ChatMsg::Leaving, Some(member)) => {
                // What was gathered so far is its too; then LEFT.
                cx.flush_broadcast();
                cx.send(member, protocol::left());
            }
            (ChatMsg::Leaving, None) => {}
        }
    }
}

/// Closes the session for a request it could not have made in good
/// faith, telling the client why first (an ERROR before the FIN).
fn violation(s: &mut Session<'_>, what: impl Into<Cow<'static, str>>) {
    let what = what.into();
    let _ = s.send(protocol::error(&what));
    s.close_with(CloseReason::protocol(what));
}

impl ChatSession {
    fn join(&mut self, s: &mut Session<'_>, body: &[u8]) {
        let Ok(room) = std::str::from_utf8(body) else {
            return violation(s, "JOIN: room name is not UTF-8");
        };
        if room.is_empty() || room.len() > MAX_ROOM {
            return violation(
                s,
                format!("JOIN: room name of {} bytes (1 to {MAX_ROOM})", room.len()),
            );
        }
        if let Some(rooms) = &self.rooms {
            if let Some((old, id)) = self.room.take() {
                let _ = old.leave(id);
            }
            let joined = rooms.get(room).and_then(|r| r.join(s.id()).map(|()| r));
            match joined {
                Ok(r) => self.room = Some((r, s.id())),
                Err(e) => {
                    let _ = s.send(protocol::error(&format!("cannot join: {e}")));
                }
            }
            return;
        }
        if let Some(old) = self.topic.take() {
            s.unsubscribe(&old);
        }
        let topic: Box<str> = format!("{ROOM}{room}").into();
        s.subscribe(&topic);
        self.topic = Some(topic);
        self.joined_owed = true;
        self.send_joined(s);
    }

    /// Sends the JOINED owed once the room reaches every instance; until
    /// then looks again every millisecond.
    fn send_joined(&mut self, s: &mut Session<'_>) {
        let Some(topic) = self.topic.as_deref().filter(|_| self.joined_owed) else {
            return;
        };
        if !s.topic_ready(topic) {
            s.set_timer(std::time::Duration::from_millis(1));
            return;
        }
        self.joined_owed = false;
        let members = s.subscribers(topic).min(u32::MAX as u64) as u32;
        let max_text = self.max_text.min(u32::MAX as usize) as u32;
        let _ = s.send(protocol::joined(members, max_text, &topic[ROOM.len()..]));
    }

    fn say(&mut self, s: &mut Session<'_>, body: &[u8]) {
        if std::str::from_utf8(body).is_err() {
            return violation(s, "SAY: text is not UTF-8");
        }
        if body.len() > self.max_text {
            return violation(
                s,
                format!(
                    "SAY: text of {} bytes (at most {} fit a MSG)",
                    body.len(),
                    self.max_text
                ),
            );
        }
        if let Some((room, _)) = &self.room {
            let msg = ChatMsg::Say(protocol::msg(s.id().as_u64(), body));
            if let Err(e) = room.post(Some(s.id()), msg) {
                let _ = s.send(protocol::error(&format!("not said: {e}")));
            }
            return;
        }
        let Some(topic) = &self.topic else {
            let _ = s.send(protocol::error("join a room first"));
            return;
        };
        let msg = protocol::msg(s.id().as_u64(), body);
        s.publish(topic, msg);
    }

    fn leave(&mut self, s: &mut Session<'_>) {
        if self.rooms.is_some() {
            match self.room.take() {
                // The room says LEFT, after what it sent this member.
                Some((room, id)) => {
                    if room.post(Some(id), ChatMsg::Leaving).is_err() {
                        let _ = s.send(protocol::left());
                    }
                    let _ = room.leave(id);
                }
                None => {
                    let _ = s.send(protocol::error("not in a room"));
                }
            }
            return;
        }
        self.joined_owed = false;
        match self.topic.take() {
            Some(topic) => {
                s.unsubscribe(&topic);
                let _ = s.send(protocol::left());
            }
            None => {
                let _ = s.send(protocol::error("not in a room"));
            }
        }
    }
}

impl PacketHandler for ChatSession {
    fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
        match id {
            protocol::JOIN => self.join(s, body),
            protocol::SAY => self.say(s, body),
            protocol::LEAVE => self.leave(s),
            other => violation(s, format!("unknown packet id {other}")),
        }
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        self.send_joined(s);
    }

    fn on_malformed(&mut self, s: &mut Session<'_>, why: &str) {
        let _ = s.send(protocol::error(why));
    }

    fn on_disconnected(&mut self, _: CloseReason) {
        if let Some((room, id)) = self.room.take() {
            let _ = room.leave(id);
        }
    }
}
