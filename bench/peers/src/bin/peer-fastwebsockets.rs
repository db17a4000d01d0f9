//! fastwebsockets WebSocket echo server, single-threaded (current_thread):
//! hyper serves the upgrade, then one task per connection reads whole
//! messages (`FragmentCollector`) and writes text and binary ones back, as
//! its echo example does.
use fastwebsockets::{upgrade, FragmentCollector, OpCode};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

async fn serve(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, fastwebsockets::WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let Ok(ws) = fut.await else {
            return;
        };
        let mut ws = FragmentCollector::new(ws);
        while let Ok(frame) = ws.read_frame().await {
            let echo = match frame.opcode {
                OpCode::Text | OpCode::Binary => ws.write_frame(frame).await,
                OpCode::Close => return,
                _ => Ok(()),
            };
            if echo.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    iocore_peers::accept_loop(|stream, _| async move {
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, hyper::service::service_fn(serve))
            .with_upgrades()
            .await;
    })
    .await;
}
