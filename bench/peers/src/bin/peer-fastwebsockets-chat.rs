//! fastwebsockets chat server speaking iocore's chat protocol, one packet
//! per binary message (see `iocore_peers::chat`): single-threaded
//! (current_thread); hyper serves the upgrade; per connection a reader
//! task (its `read_frame` is not cancel-safe, so it is not raced) hands
//! packets to a writer task that `select!`s between them and the room's
//! broadcast channel and writes each frame for its member.
use fastwebsockets::{upgrade, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use iocore_peers::chat::{Member, Reply, Rooms};
use tokio::sync::mpsc;

async fn serve(
    mut req: Request<Incoming>,
    rooms: Rooms,
    id: u64,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let Ok(ws) = fut.await else {
            return;
        };
        let (mut rx, mut tx) = ws.split(tokio::io::split);
        let (packets_tx, mut packets) = mpsc::unbounded_channel::<Vec<u8>>();
        // The reader: whole binary messages to the writer.
        tokio::spawn(async move {
            let mut obligated = |_: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
            while let Ok(frame) = rx.read_frame(&mut obligated).await {
                match frame.opcode {
                    OpCode::Binary if packets_tx.send(frame.payload.to_vec()).is_err() => return,
                    OpCode::Close => return,
                    _ => {}
                }
            }
        });
        let mut member = Member { id, room: None };
        loop {
            let out = tokio::select! {
                packet = packets.recv() => match packet {
                    Some(p) => match member.packet(&rooms, &p) {
                        Reply::Send(reply) => reply,
                        Reply::Nothing => continue,
                        Reply::Close => return,
                    },
                    None => return,
                },
                Some(msg) = member.from_room() => msg,
            };
            let frame = Frame::binary(Payload::Borrowed(&out));
            if tx.write_frame(frame).await.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rooms = Rooms::default();
    iocore_peers::accept_loop(|stream, id| {
        let rooms = rooms.clone();
        async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| serve(req, rooms.clone(), id));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await;
        }
    })
    .await;
}
