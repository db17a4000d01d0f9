//! tokio arena server speaking iocore's arena protocol
//! (iocore-cli/proto/arena.proto), written the way a tokio user would:
//! single-threaded (current_thread, as the bench pins each server to one
//! CPU), one task per room that `select!`s between a
//! `tokio::time::interval` (missed ticks skipped) and its bounded `mpsc`
//! inbox, and per connection a reader task and a writer task fed by an
//! unbounded `mpsc` of encoded packets. The room encodes each snapshot
//! once and sends a clone of the `Bytes` to every member's writer.
//!
//! The game is iocore's arena: 20 players a room, inputs clamped to 10
//! per tick, a dropped player's place kept for 10 s for its token.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

#[allow(dead_code)] // the messages this side only sends or only reads
mod arena {
    include!(concat!(env!("OUT_DIR"), "/arena.rs"));
}

const C_JOIN: u16 = 1;
const C_INPUT: u16 = 2;
const C_LEAVE: u16 = 3;
const S_WELCOME: u16 = 101;
const S_SNAPSHOT: u16 = 102;
const S_REFUSED: u16 = 103;
const MAX_PACKET: usize = 16 * 1024;
const ROOM_SIZE: usize = 20;
const TICK_HZ: u32 = 20;
const GRACE: Duration = Duration::from_secs(10);
const WORLD: i32 = 1000;
const MAX_STEP: i32 = 10;

type Writer = mpsc::UnboundedSender<Bytes>;
type Rooms = Arc<Mutex<HashMap<String, mpsc::Sender<ToRoom>>>>;

enum ToRoom {
    Join { conn: u64, token: u64, writer: Writer },
    Input { conn: u64, seq: u32, dx: i32, dy: i32 },
    Leave { conn: u64, quit: bool },
}

fn packet(id: u16, msg: &impl Message) -> Bytes {
    let size = 4 + msg.encoded_len();
    let mut b = BytesMut::with_capacity(size);
    b.put_u16_le(size as u16);
    b.put_u16_le(id);
    msg.encode(&mut b).unwrap();
    b.freeze()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listener = tokio::net::TcpListener::bind(iocore_peers::listen_addr())
        .await
        .unwrap();
    let rooms = Rooms::default();
    let mut next = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        next += 1;
        tokio::spawn(connection(stream, next, rooms.clone()));
    }
}

/// One connection: a writer task drains its queue; this task reads.
async fn connection(stream: TcpStream, conn: u64, rooms: Rooms) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(4096);
    let mut room: Option<mpsc::Sender<ToRoom>> = None;
    'read: loop {
        while buf.len() >= 4 {
            let size = u16::from_le_bytes([buf[0], buf[1]]) as usize;
            if !(4..=MAX_PACKET).contains(&size) {
                break 'read;
            }
            if buf.len() < size {
                break;
            }
            let id = u16::from_le_bytes([buf[2], buf[3]]);
            let body = buf.split_to(size).split_off(4);
            match id {
                C_JOIN if room.is_none() => {
                    let Ok(join) = arena::CJoin::decode(&body[..]) else {
                        break 'read;
                    };
                    let to = room_of(&rooms, &join.room);
                    let msg = ToRoom::Join {
                        conn,
                        token: join.token,
                        writer: tx.clone(),
                    };
                    if to.send(msg).await.is_err() {
                        break 'read;
                    }
                    room = Some(to);
                }
                C_INPUT => {
                    let (Some(to), Ok(input)) = (&room, arena::CInput::decode(&body[..])) else {
                        break 'read;
                    };
                    let msg = ToRoom::Input {
                        conn,
                        seq: input.seq,
                        dx: input.dx,
                        dy: input.dy,
                    };
                    // A full inbox drops the input, as iocore's arena does.
                    let _ = to.try_send(msg);
                }
                C_LEAVE => {
                    if let Some(to) = room.take() {
                        let _ = to.send(ToRoom::Leave { conn, quit: true }).await;
                    }
                }
                _ => break 'read,
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => buf.reserve(4096),
        }
    }
    if let Some(to) = room {
        let _ = to.send(ToRoom::Leave { conn, quit: false }).await;
    }
}

/// The room's inbox, its task started if it has none.
fn room_of(rooms: &Rooms, name: &str) -> mpsc::Sender<ToRoom> {
    let mut rooms = rooms.lock().unwrap();
    if let Some(tx) = rooms.get(name) {
        if !tx.is_closed() {
            return tx.clone();
        }
    }
    let (tx, rx) = mpsc::channel(1024);
    rooms.insert(name.to_string(), tx.clone());
    tokio::spawn(room(rx));
    tx
}

struct Player {
    id: u32,
    token: u64,
    conn: Option<(u64, Writer)>,
    dropped_at: Option<Instant>,
    x: i32,
    y: i32,
    dx: i32,
    dy: i32,
    last_input: u32,
}

/// One room: its tick and its inbox.
async fn room(mut inbox: mpsc::Receiver<ToRoom>) {
    let period = Duration::from_secs(1) / TICK_HZ;
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut players: Vec<Player> = Vec::new();
    let mut next_id = 1u32;
    let mut last_tick = 0u64;
    loop {
        tokio::select! {
            due = ticks.tick() => {
                let now = Instant::now();
                players.retain(|p| p.dropped_at.is_none_or(|t| now - t < GRACE));
                let n = ((due - start).as_nanos() / period.as_nanos()) as u64;
                let mut snap = arena::SSnapshot {
                    tick: n,
                    lateness_us: (now - due).as_micros() as u32,
                    missed: n.saturating_sub(last_tick + 1) as u32,
                    players: Vec::with_capacity(players.len()),
                };
                last_tick = n;
                for p in &mut players {
                    p.x = (p.x + p.dx).clamp(0, WORLD - 1);
                    p.y = (p.y + p.dy).clamp(0, WORLD - 1);
                    p.dx = 0;
                    p.dy = 0;
                    snap.players.push(arena::PlayerState {
                        id: p.id,
                        x: p.x,
                        y: p.y,
                        last_input: p.last_input,
                        connected: p.conn.is_some(),
                    });
                }
                let buf = packet(S_SNAPSHOT, &snap);
                for p in &players {
                    if let Some((_, w)) = &p.conn {
                        let _ = w.send(buf.clone());
                    }
                }
            }
            msg = inbox.recv() => match msg {
                None => return,
                Some(ToRoom::Join { conn, token, writer }) => {
                    let refuse = |why: &str| {
                        let _ = writer.send(packet(S_REFUSED, &arena::SRefused { reason: why.into() }));
                    };
                    let i = if token != 0 {
                        match players.iter().position(|p| p.token == token && p.conn.is_none()) {
                            Some(i) => i,
                            None => { refuse("unknown or expired token"); continue; }
                        }
                    } else if players.len() >= ROOM_SIZE {
                        refuse("the room is full");
                        continue;
                    } else {
                        let id = next_id;
                        next_id += 1;
                        let spot = (id as i64 * 7919) as i32;
                        players.push(Player {
                            id,
                            token: (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                            conn: None,
                            dropped_at: None,
                            x: spot.rem_euclid(WORLD),
                            y: (spot / 3).rem_euclid(WORLD),
                            dx: 0,
                            dy: 0,
                            last_input: 0,
                        });
                        players.len() - 1
                    };
                    let p = &mut players[i];
                    let rejoined = p.dropped_at.take().is_some();
                    let welcome = arena::SWelcome {
                        player: p.id,
                        token: p.token,
                        tick_hz: TICK_HZ,
                        rejoined,
                        grace_ms: GRACE.as_millis() as u32,
                    };
                    let _ = writer.send(packet(S_WELCOME, &welcome));
                    p.conn = Some((conn, writer));
                }
                Some(ToRoom::Input { conn, seq, dx, dy }) => {
                    if let Some(p) = players.iter_mut().find(|p| p.conn.as_ref().is_some_and(|c| c.0 == conn)) {
                        p.dx = (p.dx + dx).clamp(-MAX_STEP, MAX_STEP);
                        p.dy = (p.dy + dy).clamp(-MAX_STEP, MAX_STEP);
                        p.last_input = p.last_input.max(seq);
                    }
                }
                Some(ToRoom::Leave { conn, quit }) => {
                    if quit {
                        players.retain(|p| p.conn.as_ref().is_none_or(|c| c.0 != conn));
                    } else if let Some(p) = players.iter_mut().find(|p| p.conn.as_ref().is_some_and(|c| c.0 == conn)) {
                        p.conn = None;
                        p.dropped_at = Some(Instant::now());
                    }
                }
            },
        }
    }
}
