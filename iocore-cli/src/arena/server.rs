//! The arena server (`iocore serve --app arena`).
//!
//! Each room is an [`iocore::room::Room`]: it owns its players, applies
//! their inputs on its tick (20 Hz by default) and sends every member the
//! room's snapshot, encoded once per tick and shared by all. A session
//! ([`PlayerSession`]) only translates packets into posts to its room: the game
//! state is touched by the room alone, one job at a time, whatever worker
//! the players' sessions are on.
//!
//! A player who drops keeps its place for the grace period: a CJoin with
//! the token its welcome gave takes it back (same player id and
//! position). After the grace the place is freed; a late token is
//! refused.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iocore::packet::{PacketHandler, Packets};
use iocore::room::{PostError, Room, RoomCx, RoomRef, Rooms, TickInfo};
use iocore::{CloseReason, Session, SessionId};

use super::wire::{self, Dispatch};
use super::{MAX_PACKET, MAX_ROOM, MAX_STEP, WORLD};

/// How the arena runs.
#[derive(Clone, Debug)]
pub struct ArenaConfig {
    /// Most players in a room (connected, or dropped within the grace).
    pub room_size: usize,
    /// Ticks per second.
    pub tick_hz: u32,
    /// How long a dropped player's place is kept for it.
    pub grace: Duration,
}

impl Default for ArenaConfig {
    fn default() -> ArenaConfig {
        ArenaConfig {
            room_size: 20,
            tick_hz: 20,
            grace: Duration::from_secs(10),
        }
    }
}

impl ArenaConfig {
    /// Checks the configuration, in the words of the `serve` flags.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.room_size) {
            return Err("--room-size must be between 1 and 1000".into());
        }
        if !(1..=1000).contains(&self.tick_hz) {
            return Err("--tick-rate must be between 1 and 1000 ticks a second".into());
        }
        Ok(())
    }

    fn period(&self) -> Duration {
        Duration::from_secs(1) / self.tick_hz
    }
}

/// What a session posts to its room.
#[derive(Debug)]
pub enum Msg {
    /// The session (already a member) asks for a place: new (`token` 0)
    /// or back.
    Hello { token: u64 },
    /// A player's input.
    Input { seq: u32, dx: i32, dy: i32 },
    /// The grace period of a dropped player is over (if `epoch` is still
    /// its).
    Expire { player: u32, epoch: u32 },
    /// The session's player leaves for good (CLeave): its place is freed.
    Quit,
}

struct Player {
    id: u32,
    token: u64,
    session: Option<SessionId>,
    /// Counts drops: an expiry set at one drop does not remove a player
    /// who came back and dropped again.
    epoch: u32,
    x: i32,
    y: i32,
    /// Movement asked since the last tick.
    dx: i32,
    dy: i32,
    last_input: u32,
}

/// One arena room.
pub struct ArenaRoom {
    cfg: Arc<ArenaConfig>,
    players: Vec<Player>,
    next_id: u32,
    tokens: RandomState,
    snapshot: wire::SSnapshot,
}

/// A token no one can guess: a randomly keyed hash of a counter.
fn token_for(keys: &RandomState) -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    keys.hash_one(COUNTER.fetch_add(1, Ordering::Relaxed)) | 1
}

fn send(cx: &mut RoomCx<'_, Msg>, to: SessionId, msg: impl iocore_proto::Packet) {
    if let Ok(buf) = iocore_proto::encode(&msg) {
        cx.send(to, buf);
    }
}

impl ArenaRoom {
    /// An empty room.
    pub fn new(cfg: Arc<ArenaConfig>) -> ArenaRoom {
        ArenaRoom {
            cfg,
            players: Vec::new(),
            next_id: 1,
            tokens: RandomState::new(),
            snapshot: wire::SSnapshot::default(),
        }
    }

    fn refuse(&self, cx: &mut RoomCx<'_, Msg>, member: SessionId, why: &'static str) {
        send(cx, member, wire::SRefused { reason: why.into() });
        cx.kick(member, CloseReason::custom(why));
    }

    fn welcome(&self, cx: &mut RoomCx<'_, Msg>, i: usize, rejoined: bool) {
        let p = &self.players[i];
        let welcome = wire::SWelcome {
            player: p.id,
            token: p.token,
            tick_hz: self.cfg.tick_hz,
            rejoined,
            grace_ms: self.cfg.grace.as_millis() as u32,
        };
        send(cx, p.session.expect("a welcomed player is connected"), welcome);
    }

    fn hello(&mut self, cx: &mut RoomCx<'_, Msg>, member: SessionId, token: u64) {
        if self.players.iter().any(|p| p.session == Some(member)) {
            return self.refuse(cx, member, "already in the room");
        }
        if token != 0 {
            let Some(i) = self.players.iter().position(|p| p.token == token) else {
                return self.refuse(cx, member, "unknown or expired token");
            };
            if self.players[i].session.is_some() {
                return self.refuse(cx, member, "that player is connected");
            }
            self.players[i].session = Some(member);
            return self.welcome(cx, i, true);
        }
        if self.players.len() >= self.cfg.room_size {
            return self.refuse(cx, member, "the room is full");
        }
        let id = self.next_id;
        self.next_id += 1;
        // Spread new players over the world.
        let spot = (id as i64 * 7919) as i32;
        self.players.push(Player {
            id,
            token: token_for(&self.tokens),
            session: Some(member),
            epoch: 0,
            x: spot.rem_euclid(WORLD),
            y: (spot / 3).rem_euclid(WORLD),
            dx: 0,
            dy: 0,
            last_input: 0,
        });
        if self.players.len() == 1 {
            cx.set_tick_spread(self.cfg.period());
        }
        self.welcome(cx, self.players.len() - 1, false);
    }
}

impl Room for ArenaRoom {
    type Msg = Msg;

    fn on_message(&mut self, cx: &mut RoomCx<'_, Msg>, from: Option<SessionId>, msg: Msg) {
        match (from, msg) {
            (Some(member), Msg::Hello { token }) => self.hello(cx, member, token),
            (Some(member), Msg::Input { seq, dx, dy }) => {
                if let Some(p) = self.players.iter_mut().find(|p| p.session == Some(member)) {
                    p.dx = (p.dx + dx).clamp(-MAX_STEP, MAX_STEP);
                    p.dy = (p.dy + dy).clamp(-MAX_STEP, MAX_STEP);
                    p.last_input = p.last_input.max(seq);
                }
            }
            (Some(member), Msg::Quit) => {
                self.players.retain(|p| p.session != Some(member));
                if self.players.is_empty() {
                    cx.stop_tick();
                }
            }
            (None, Msg::Expire { player, epoch }) => {
                self.players
                    .retain(|p| !(p.id == player && p.epoch == epoch && p.session.is_none()));
                if self.players.is_empty() {
                    cx.stop_tick();
                }
            }
            _ => {}
        }
    }

    fn on_leave(&mut self, cx: &mut RoomCx<'_, Msg>, member: SessionId) {
        let grace = self.cfg.grace;
        if let Some(p) = self.players.iter_mut().find(|p| p.session == Some(member)) {
            p.session = None;
            p.epoch += 1;
            p.dx = 0;
            p.dy = 0;
            let expire = Msg::Expire {
                player: p.id,
                epoch: p.epoch,
            };
            cx.after(grace, expire);
        }
    }

    fn on_tick(&mut self, cx: &mut RoomCx<'_, Msg>, tick: TickInfo) {
        let snap = &mut self.snapshot;
        snap.tick = tick.n;
        snap.lateness_us = tick.lateness.as_micros().min(u32::MAX as u128) as u32;
        snap.missed = tick.missed.min(u32::MAX as u64) as u32;
        snap.players.clear();
        for p in &mut self.players {
            p.x = (p.x + p.dx).clamp(0, WORLD - 1);
            p.y = (p.y + p.dy).clamp(0, WORLD - 1);
            p.dx = 0;
            p.dy = 0;
            snap.players.push(wire::PlayerState {
                id: p.id,
                x: p.x,
                y: p.y,
                last_input: p.last_input,
                connected: p.session.is_some(),
            });
        }
        // One buffer for every member.
        if let Ok(buf) = iocore_proto::encode(&*snap) {
            cx.broadcast(buf);
        }
    }
}

/// The rooms of an arena server.
pub fn rooms(cfg: ArenaConfig) -> Rooms<ArenaRoom> {
    let cfg = Arc::new(cfg);
    Rooms::new(move |_| ArenaRoom::new(cfg.clone()))
}

/// A player's session: packets in, posts to its room.
pub struct PlayerSession {
    rooms: Rooms<ArenaRoom>,
    room: Option<RoomRef<Msg>>,
    id: Option<SessionId>,
}

/// A session of an arena server whose rooms are `rooms`.
pub fn handler(rooms: &Rooms<ArenaRoom>) -> Packets<PlayerSession> {
    Packets::new(PlayerSession {
        rooms: rooms.clone(),
        room: None,
        id: None,
    })
    .max_packet(MAX_PACKET)
}

/// Refuses a join the session cannot make, then closes it.
fn refused(s: &mut Session<'_>, why: &str) {
    if let Ok(buf) = iocore_proto::encode(&wire::SRefused { reason: why.into() }) {
        let _ = s.send(buf);
    }
    s.close_with(CloseReason::custom(why.to_string()));
}

impl PlayerSession {
    fn leave(&mut self) {
        if let (Some(room), Some(id)) = (self.room.take(), self.id) {
            // Only fails once the server stops: the room goes with it.
            let _ = room.leave(id);
        }
    }
}

impl Dispatch for PlayerSession {
    fn on_c_join(&mut self, s: &mut Session<'_>, msg: wire::CJoin) {
        if self.room.is_some() {
            return s.close_with(CloseReason::protocol("CJoin: already in a room"));
        }
        if msg.room.is_empty() || msg.room.len() > MAX_ROOM {
            return s.close_with(CloseReason::protocol("CJoin: a room name is 1 to 64 bytes"));
        }
        let room = match self.rooms.get(&msg.room) {
            Ok(room) => room,
            Err(e) => return refused(s, &format!("cannot join: {e}")),
        };
        let posted = room
            .join(s.id())
            .and_then(|()| room.post(Some(s.id()), Msg::Hello { token: msg.token }));
        match posted {
            Ok(()) => self.room = Some(room),
            Err(PostError::Full) => {
                let _ = room.leave(s.id());
                refused(s, "the room is busy: try again")
            }
            Err(e) => refused(s, &format!("cannot join: {e}")),
        }
    }

    fn on_c_input(&mut self, s: &mut Session<'_>, msg: wire::CInput) {
        let Some(room) = &self.room else {
            return s.close_with(CloseReason::protocol("CInput before CJoin"));
        };
        // A full inbox drops the input: the next one moves the player on.
        let _ = room.post(
            Some(s.id()),
            Msg::Input {
                seq: msg.seq,
                dx: msg.dx,
                dy: msg.dy,
            },
        );
    }

    fn on_c_leave(&mut self, s: &mut Session<'_>, _: wire::CLeave) {
        if let Some(room) = &self.room {
            // Refused only by a full inbox: then the leave below keeps the
            // place for the grace period, and it is freed after that.
            let _ = room.post(Some(s.id()), Msg::Quit);
        }
        self.leave();
    }
}

impl PacketHandler for PlayerSession {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.id = Some(s.id());
    }

    fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
        wire::dispatch(self, s, id, body);
    }

    fn on_disconnected(&mut self, _: CloseReason) {
        self.leave();
    }
}
