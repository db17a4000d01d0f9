//! The arena: an authoritative sample game on iocore's rooms and typed
//! packets.
//!
//! - [`wire`] — the packets, generated from `proto/arena.proto` by
//!   iocore-proto (ids fixed in the file's `PacketId` enum).
//! - [`server`] — the room (players, their inputs, the simulation on the
//!   tick, snapshots) and the player's session (`iocore serve --app
//!   arena`).
//! - [`bots`] — the load client (`iocore client --scenario arena`): bots
//!   that join, send inputs and measure tick lateness, input-to-snapshot
//!   latency and bytes per player.

pub mod bots;
pub mod server;

/// The arena's packets (prost messages, `Packet`, `Dispatch`, `dispatch`).
#[allow(missing_docs, clippy::all)]
pub mod wire {
    iocore_proto::include_proto!("arena");
}

/// The side of the square world: positions are `0..WORLD` on each axis.
pub const WORLD: i32 = 1000;

/// The most a player moves per tick on each axis.
pub const MAX_STEP: i32 = 10;

/// The longest room name, in bytes.
pub const MAX_ROOM: usize = 64;

/// The largest arena packet: a snapshot of a full room fits easily.
pub const MAX_PACKET: usize = 16 * 1024;
