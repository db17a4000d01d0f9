//! A further listener of a server (its WebSocket port beside the TCP one,
//! see `ServerBuilder::websocket_listener`): a thread of its own accepts
//! and hands each connection to the workers in turn, as the hand-off
//! accept strategy does; the worker admits it under the server's limits
//! and serves it with the listener's transport. Accepting on a thread
//! costs a hand-over per connection, not per message.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::{Command, Inbox, TlsCfg, WsConfig};
use crate::session::Handler;
use crate::sys::OwnedSocket;

/// A listener's accepting thread.
pub(crate) struct Acceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Acceptor {
    /// The listener on `addr`.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
    }

    /// Hands what `listener` accepts to `workers` in turn, to be served as
    /// WebSocket sessions with `websocket`.
    pub(crate) fn start<H: Handler>(
        listener: TcpListener,
        workers: Vec<Arc<Inbox<H>>>,
        websocket: Arc<WsConfig>,
        tls: Option<Arc<TlsCfg>>,
    ) -> io::Result<Acceptor> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("iocore-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, workers, websocket, tls, &stopped))?;
        Ok(Acceptor {
            addr,
            stop,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (the listener closes); connections already handed
    /// over are the workers'.
    pub(crate) fn stop(&self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // The thread waits in accept(): a connection of our own wakes it.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let _ = TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), Duration::from_secs(5));
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop<H: Handler>(
    listener: TcpListener,
    workers: Vec<Arc<Inbox<H>>>,
    websocket: Arc<WsConfig>,
    tls: Option<Arc<TlsCfg>>,
    stop: &AtomicBool,
) {
    let mut next = 0;
    let mut failures = 0u32;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or memory: wait a little and go on.
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "accept failed on a WebSocket listener");
                }
                failures = failures.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let mut cmd = Command::Adopt {
            socket: OwnedSocket::from(stream),
            peer,
            websocket: Some(websocket.clone()),
            tls: tls.clone(),
        };
        // The next worker that is still serving takes it.
        let mut tried = 0;
        loop {
            let to = next % workers.len();
            next += 1;
            match workers[to].push(cmd) {
                Ok(()) => break,
                Err(back) if tried + 1 < workers.len() => {
                    cmd = back;
                    tried += 1;
                }
                // Every worker has ended: so has the server.
                Err(_) => return,
            }
        }
    }
}
