//! A room that ticks: players' moves are gathered and, every 50 ms, sent
//! to every player in one buffer (the README's room example).
//!
//!     cargo run -p iocore --example match_room
//!     # then, in other terminals: nc 127.0.0.1 7777   (type, see the ticks)

use std::time::Duration;

use iocore::room::{Room, RoomCx, Rooms, TickInfo};
use iocore::{Handler, Server, Session, SessionId};

struct Match {
    moves: Vec<u8>,
}

impl Room for Match {
    type Msg = u8; // a player's move
    fn on_join(&mut self, cx: &mut RoomCx<'_, u8>, _: SessionId) {
        if cx.members().len() == 1 {
            cx.set_tick(Duration::from_millis(50));
        }
    }
    fn on_message(&mut self, _: &mut RoomCx<'_, u8>, _: Option<SessionId>, m: u8) {
        self.moves.push(m);
    }
    fn on_tick(&mut self, cx: &mut RoomCx<'_, u8>, _: TickInfo) {
        if !self.moves.is_empty() {
            cx.broadcast(std::mem::take(&mut self.moves)); // one buffer for all
        }
    }
}

struct Player {
    rooms: Rooms<Match>,
    id: Option<SessionId>,
}

impl Handler for Player {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.id = Some(s.id());
        let _ = self.rooms.get("arena-1").and_then(|r| r.join(s.id()));
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let room = self.rooms.get("arena-1");
        for &m in data {
            let _ = room.as_ref().map(|r| r.post(Some(s.id()), m));
        }
        data.len()
    }
    fn on_disconnected(&mut self, _: iocore::CloseReason) {
        if let (Some(id), Ok(r)) = (self.id, self.rooms.get("arena-1")) {
            let _ = r.leave(id);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rooms = Rooms::new(|_key| Match { moves: Vec::new() });
    let r = rooms.clone();
    let server = Server::builder().rooms(&rooms).start(move || Player {
        rooms: r.clone(),
        id: None,
    })?;
    println!("serving on {}; Ctrl-C to stop", server.local_addr());
    server.join()?;
    Ok(())
}
