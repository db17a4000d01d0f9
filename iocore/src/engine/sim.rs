//! The simulated engine behind [`crate::testing`]: sessions on in-memory
//! pipes, on a clock the caller moves. It is the readiness engines' loop
//! with the sockets taken out: the same session core ([`Conn`]), the same
//! control ([`Driver`]: commands, fan-out, deadlines, stop), the same
//! admission decisions, the same read loop and gather write; only where
//! bytes go and what time it is are the test's.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::core::Core;
use super::driver::{CloseAtOnce, Driver};
use super::readiness::{flush_gather, read_into_scratch, ReadEnd};
use super::{
    publish_everywhere, Command, Control, Factory, Inbox, IpGate, Remote, SessionGate, Worker, WorkerStats,
};
use crate::session::{CloseReason, Conn, Handler, SessionId, Tick};
use crate::sys::OwnedSocket;
use crate::{ServerBuilder, Stats, ToSessionError, TopicStats};

/// Bytes the server side of a pipe holds for its peer before the
/// server's sends are refused, unless [`Sim::set_window`] says otherwise:
/// a socket buffer and a window together.
pub const DEFAULT_WINDOW: usize = 256 * 1024;
/// The most a read takes at once (the readiness engines' scratch buffer).
const SCRATCH: usize = 64 * 1024;
/// Turns of the workers at one instant before [`Sim::run`] calls it a
/// livelock.
const MAX_TURNS: usize = 10_000;

/// What [`Sim::run`] compares before and after a turn: each pipe's
/// lengths, acknowledged count and flags; each worker's sessions, turns,
/// messages sent and closes.
type Signature = (Vec<(usize, usize, u64, u8)>, Vec<(usize, u64, u64, u64, u64)>);

/// One connection: both directions and both ends' state.
#[derive(Debug)]
struct Pipe {
    /// The peer's address, as the server sees it.
    addr: SocketAddr,
    /// Written by the peer, not yet read by the server.
    to_server: VecDeque<u8>,
    /// Written by the server, not yet read by the peer.
    to_peer: VecDeque<u8>,
    /// How many unread bytes `to_peer` takes before the server's sends are
    /// refused (WouldBlock).
    window: usize,
    /// The peer sent FIN: the server reads the end once `to_server` is
    /// empty.
    peer_fin: bool,
    /// The peer reset the connection.
    peer_rst: bool,
    /// The server sent FIN.
    server_fin: bool,
    /// The server's end is closed (`Some(true)`: with RST).
    server_closed: Option<bool>,
    /// Bytes of the server's the peer has read: what its kernel
    /// acknowledged (the stall timeout's measure).
    acked: u64,
    /// The session, once the server has one for this pipe.
    session: Option<SessionId>,
}

impl Pipe {
    fn new(addr: SocketAddr, window: usize) -> Pipe {
        Pipe {
            addr,
            to_server: VecDeque::new(),
            to_peer: VecDeque::new(),
            window,
            peer_fin: false,
            peer_rst: false,
            server_fin: false,
            server_closed: None,
            acked: 0,
            session: None,
        }
    }

    /// The server reads into `buf`: bytes, 0 at the peer's FIN, or an
    /// error (reset, or WouldBlock when nothing is there).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.peer_rst {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if self.to_server.is_empty() {
            return match self.peer_fin {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = buf.len().min(self.to_server.len());
        for (b, byte) in buf.iter_mut().zip(self.to_server.drain(..n)) {
            *b = byte;
        }
        Ok(n)
    }

    /// The server writes: as much as the window takes.
    fn write(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.peer_rst {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let room = self.window.saturating_sub(self.to_peer.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room - n);
            self.to_peer.extend(&b[..take]);
            n += take;
            if n == room {
                break;
            }
        }
        Ok(n)
    }

    fn has_room(&self) -> bool {
        self.to_peer.len() < self.window
    }

    /// What the loop looks at to see whether a turn changed anything.
    fn signature(&self) -> (usize, usize, u64, u8) {
        let flags = u8::from(self.peer_fin)
            | u8::from(self.peer_rst) << 1
            | u8::from(self.server_fin) << 2
            | u8::from(self.server_closed.is_some()) << 3;
        (self.to_server.len(), self.to_peer.len(), self.acked, flags)
    }
}

/// The engine's per-session state: its pipe, whether its last write was
/// refused, whether reading stopped because input was not wanted.
struct SimIo {
    pipe: Rc<RefCell<Pipe>>,
    write_blocked: bool,
    read_stalled: bool,
    /// An outbound connect not yet completed.
    connecting: bool,
}

/// One worker's loop over its pipes.
struct SimWorker<H> {
    core: Core<H, SimIo>,
    scratch: Box<[u8]>,
    /// Outbound connections made by its sessions' handlers' workers
    /// (`Command::Connect`): pipes the test can reach as peers too.
    new_pipes: Vec<Rc<RefCell<Pipe>>>,
    window: usize,
}

impl<H: Handler> SimWorker<H> {
    /// Reads what the pipe holds (as the readiness engines read a socket).
    fn readable(&mut self, token: u64) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        if slot.conn.is_connecting() {
            return;
        }
        let pipe = slot.io.pipe.clone();
        cx.hub.cork.borrow_mut().open_for(token);
        let end = read_into_scratch(&mut slot.conn, &mut self.scratch, stats, cx, usize::MAX, |buf| {
            pipe.borrow_mut().read(buf)
        });
        slot.io.read_stalled = end == ReadEnd::Paused;
    }

    /// Gives every session what its pipe holds for it; returns whether
    /// anything was there.
    fn poll_pipes(&mut self) -> io::Result<()> {
        for token in self.core.sessions.tokens() {
            let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
                continue;
            };
            if slot.io.connecting {
                slot.io.connecting = false;
                slot.conn.connected(cx);
                stats.connected();
            }
            let (input, room) = {
                let p = slot.io.pipe.borrow();
                (!p.to_server.is_empty() || p.peer_fin || p.peer_rst, p.has_room())
            };
            if slot.io.write_blocked && room {
                slot.io.write_blocked = false;
            }
            if input && slot.conn.wants_input() {
                self.readable(token);
            } else if input && slot.io.pipe.borrow().peer_rst {
                // Not reading now, but a reset ends the session.
                slot.conn.failed(CloseReason::PeerReset);
            }
            self.settle(token)?;
        }
        Ok(())
    }

    /// A peer connected to this worker: a session if admitted (the same
    /// decision the real engines make), else the pipe is reset.
    fn accept(&mut self, pipe: Rc<RefCell<Pipe>>) -> io::Result<()> {
        let peer = pipe.borrow().addr;
        let (websocket, tls) = (self.core.w.websocket.clone(), self.core.w.tls.clone());
        match self.core.admit_accepted(peer, websocket.as_ref(), tls.as_ref()) {
            Some(conn) => self.open(conn, pipe, false),
            None => {
                pipe.borrow_mut().server_closed = Some(true);
                Ok(())
            }
        }
    }

    fn open(&mut self, conn: Conn<H>, pipe: Rc<RefCell<Pipe>>, connecting: bool) -> io::Result<()> {
        let io = SimIo {
            pipe: pipe.clone(),
            write_blocked: false,
            read_stalled: false,
            connecting,
        };
        let token = self.core.insert(conn, io);
        pipe.borrow_mut().session = Some(SessionId::new(self.core.w.index, token));
        let (cx, slot) = self.core.slot(token).expect("just inserted");
        if !connecting {
            slot.conn.start(cx);
            self.readable(token);
        }
        self.settle(token)
    }
}

impl<H: Handler> Driver<H> for SimWorker<H> {
    type Io = SimIo;

    fn core(&mut self) -> &mut Core<H, SimIo> {
        &mut self.core
    }

    /// No sockets here: the simulated server has no listener, so nothing
    /// is ever handed over.
    fn open_accepted(&mut self, conn: Conn<H>, socket: OwnedSocket) -> io::Result<()> {
        drop(socket);
        self.core
            .finish(None, conn, CloseReason::custom("no sockets in the simulation"));
        Ok(())
    }

    /// An outbound connection to `addr`: a pipe whose peer the test reaches
    /// with [`Sim::peers`]; the connect completes at the next turn.
    fn connect(&mut self, addr: SocketAddr, handler: H) -> io::Result<()> {
        let Some(conn) = self.core.admit_outbound(addr, handler) else {
            return Ok(());
        };
        let pipe = Rc::new(RefCell::new(Pipe::new(addr, self.window)));
        self.new_pipes.push(pipe.clone());
        self.open(conn, pipe, true)
    }

    fn settle(&mut self, token: u64) -> io::Result<()> {
        self.settle_at_once(token)
    }

    fn close_listener(&mut self, listener: OwnedSocket) -> io::Result<()> {
        drop(listener);
        Ok(())
    }

    fn bytes_acked(io: &SimIo) -> Option<u64> {
        Some(io.pipe.borrow().acked)
    }
}

impl<H: Handler> CloseAtOnce<H> for SimWorker<H> {
    fn flush(&mut self, token: u64) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        let SimIo {
            pipe, write_blocked, ..
        } = &mut slot.io;
        flush_gather(
            &mut slot.conn,
            write_blocked,
            stats,
            cx,
            |iov| pipe.borrow_mut().write(iov),
            |conn| conn.send_blocked(Some(pipe.borrow().acked)),
        );
    }

    fn shutdown_write(io: &SimIo) -> io::Result<()> {
        io.pipe.borrow_mut().server_fin = true;
        Ok(())
    }

    fn release(&mut self, io: SimIo, rst: bool) {
        io.pipe.borrow_mut().server_closed = Some(rst);
    }

    fn read_stalled(io: &mut SimIo) -> &mut bool {
        &mut io.read_stalled
    }

    fn read_input(&mut self, token: u64) {
        self.readable(token);
    }
}

/// A connection's peer in a [`Sim`]: the test's end of the pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer(usize);

/// What a [`Peer`] sees of the server's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Open: more may come.
    Open,
    /// The server sent FIN, and the peer has read everything before it.
    Finished,
    /// The server reset the connection (or refused it).
    Reset,
}

/// Sessions on in-memory pipes, on a clock the test moves: a server's
/// handlers, limits, timers, topics and stop exactly as on a real engine
/// (the same session core and control run them), without sockets and
/// without waiting. Made with [`Sim::start`] from the same
/// [`ServerBuilder`] a real server takes (its address, engine, keepalive,
/// metrics and Redis settings do not apply here).
///
/// Every call that acts (a peer writes, the clock moves, a message is
/// sent from outside) runs the workers until nothing more happens at the
/// current time, so what a test asserts next has happened. Time starts at
/// zero and moves only by [`Sim::advance`]; timers fire at their exact
/// millisecond.
///
/// ```
/// use std::time::Duration;
/// use iocore::testing::{PeerState, Sim};
/// use iocore::{Handler, Server, Session};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
///         let _ = s.send_copy(data);
///         data.len()
///     }
/// }
///
/// let server = Server::builder().idle_timeout(Some(Duration::from_secs(30)));
/// let mut sim = Sim::start(server, || Echo).unwrap();
/// let peer = sim.connect();
/// sim.write(peer, b"hello");
/// assert_eq!(sim.read(peer), b"hello");
/// sim.advance(Duration::from_secs(30)); // idle: closed with FIN
/// assert_eq!(sim.state(peer), PeerState::Finished);
/// ```
pub struct Sim<H: Handler> {
    workers: Vec<SimWorker<H>>,
    pipes: Vec<Rc<RefCell<Pipe>>>,
    now: Tick,
    next_port: u16,
    next_worker: usize,
}

impl<H: Handler> Sim<H> {
    /// A simulated server configured by `builder` (threads, limits,
    /// `max_sessions`, `max_sessions_per_ip`, PROXY protocol), with a
    /// handler per connection from `factory`; the configuration is checked
    /// as [`ServerBuilder::start`] checks it.
    pub fn start<F>(builder: ServerBuilder, factory: F) -> io::Result<Sim<H>>
    where
        F: Fn() -> H + Send + Sync + 'static,
    {
        builder.validate()?;
        let (settings, threads) = builder.sim_settings();
        let factory: Factory<H> = Arc::new(factory);
        let inboxes = (0..threads)
            .map(|_| Inbox::new().map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let all: Arc<[Arc<Inbox<H>>]> = inboxes.clone().into();
        let gate = Arc::new(SessionGate::new(settings.max_sessions));
        let ip_gate = settings.max_sessions_per_ip.map(|max| Arc::new(IpGate::new(max)));
        let (ready, _) = std::sync::mpsc::channel();
        let runtime = super::next_runtime_id();
        let rooms: Arc<[crate::room::Attached]> = settings
            .rooms
            .0
            .iter()
            .map(|kind| {
                kind.attach(
                    runtime,
                    inboxes
                        .iter()
                        .map(|i| i.clone() as Arc<dyn super::Wake>)
                        .collect(),
                )
            })
            .collect::<io::Result<Vec<_>>>()?
            .into();
        let workers = inboxes
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| {
                let worker = Worker {
                    index,
                    runtime,
                    rooms: rooms.clone(),
                    listener: None,
                    workers: all.clone(),
                    hand_off: false,
                    registry: settings.registry.clone(),
                    factory: Some(factory.clone()),
                    inbox,
                    limits: settings.limits.clone(),
                    keepalive: None,
                    stats: Arc::new(WorkerStats::default()),
                    gate: gate.clone(),
                    ip_gate: ip_gate.clone(),
                    proxy: settings.proxy.clone(),
                    websocket: settings.websocket.clone(),
                    tls: settings.tls.clone(),
                    epoch: Instant::now(),
                    ready: ready.clone(),
                };
                let mut core = Core::new(worker);
                core.set_now(Tick(0));
                SimWorker {
                    core,
                    scratch: vec![0; SCRATCH].into_boxed_slice(),
                    new_pipes: Vec::new(),
                    window: DEFAULT_WINDOW,
                }
            })
            .collect();
        Ok(Sim {
            workers,
            pipes: Vec::new(),
            now: Tick(0),
            next_port: 40_000,
            next_worker: 0,
        })
    }

    /// A client connects from 127.0.0.1 (a new port each time); the
    /// workers take connections in turn. Admitted or refused as on a real
    /// server: a refused peer is [`PeerState::Reset`] at once.
    pub fn connect(&mut self) -> Peer {
        let port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(1024);
        self.connect_from(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// A client connects from `addr` (for per-address limits, or a proxy's
    /// address).
    pub fn connect_from(&mut self, addr: SocketAddr) -> Peer {
        let pipe = Rc::new(RefCell::new(Pipe::new(addr, DEFAULT_WINDOW)));
        self.pipes.push(pipe.clone());
        let w = self.next_worker;
        self.next_worker = (w + 1) % self.workers.len();
        self.workers[w]
            .accept(pipe)
            .expect("the simulated engine does no I/O that fails");
        self.run();
        Peer(self.pipes.len() - 1)
    }

    /// The peer writes `data`; the workers run.
    pub fn write(&mut self, peer: Peer, data: &[u8]) {
        self.pipe(peer).borrow_mut().to_server.extend(data);
        self.run();
    }

    /// Takes everything the server has sent `peer` so far (its kernel
    /// acknowledges it, which makes room for more); the workers run.
    pub fn read(&mut self, peer: Peer) -> Vec<u8> {
        let got: Vec<u8> = {
            let mut p = self.pipe(peer).borrow_mut();
            let got: Vec<u8> = p.to_peer.drain(..).collect();
            p.acked += got.len() as u64;
            got
        };
        self.run();
        got
    }

    /// Takes at most `max` bytes of what the server has sent `peer` (a
    /// slow reader); the workers run.
    pub fn read_some(&mut self, peer: Peer, max: usize) -> Vec<u8> {
        let got: Vec<u8> = {
            let mut p = self.pipe(peer).borrow_mut();
            let n = max.min(p.to_peer.len());
            let got: Vec<u8> = p.to_peer.drain(..n).collect();
            p.acked += n as u64;
            got
        };
        self.run();
        got
    }

    /// How many bytes the server's end of `peer`'s pipe holds unread
    /// before its sends are refused ([`DEFAULT_WINDOW`] to start with; 0:
    /// a peer that takes nothing more). The workers run.
    pub fn set_window(&mut self, peer: Peer, bytes: usize) {
        self.pipe(peer).borrow_mut().window = bytes;
        self.run();
    }

    /// The peer sends FIN; the workers run.
    pub fn shutdown(&mut self, peer: Peer) {
        self.pipe(peer).borrow_mut().peer_fin = true;
        self.run();
    }

    /// The peer resets the connection; the workers run.
    pub fn reset(&mut self, peer: Peer) {
        self.pipe(peer).borrow_mut().peer_rst = true;
        self.run();
    }

    /// What `peer` sees of the server's end.
    pub fn state(&self, peer: Peer) -> PeerState {
        let p = self.pipe(peer).borrow();
        match p.server_closed {
            Some(true) => PeerState::Reset,
            _ if (p.server_fin || p.server_closed.is_some()) && p.to_peer.is_empty() => PeerState::Finished,
            _ => PeerState::Open,
        }
    }

    /// The session the server made for `peer`'s connection, if it made
    /// one (a refused connection has none).
    pub fn session(&self, peer: Peer) -> Option<SessionId> {
        self.pipe(peer).borrow().session
    }

    /// The peers of outbound connections the handlers or [`Sim::connect_out`]
    /// made, in the order made (they count as [`Peer`]s too).
    pub fn peers(&self) -> Vec<Peer> {
        (0..self.pipes.len()).map(Peer).collect()
    }

    /// An outbound connection to `addr` whose session `make` builds, made
    /// by the next worker in turn (as [`crate::ClientHandle::connect`]);
    /// it connects at once. Its peer is returned.
    pub fn connect_out(&mut self, addr: SocketAddr, make: impl FnOnce() -> H + Send + 'static) -> Peer {
        let w = self.next_worker;
        self.next_worker = (w + 1) % self.workers.len();
        let cmd = Command::Connect {
            addr,
            make: Box::new(make),
            reply: None,
        };
        if self.workers[w].core.w.inbox.push(cmd).is_err() {
            unreachable!("a simulated worker's inbox is open until the sim is dropped");
        }
        self.run();
        self.pipes
            .last()
            .map(|_| Peer(self.pipes.len() - 1))
            .expect("the connect made a pipe")
    }

    /// Queues `buf` on session `id` from outside its callbacks, as
    /// [`crate::ServerHandle::send`]; the workers run.
    pub fn send(&mut self, id: SessionId, buf: impl Into<Bytes>) -> Result<(), ToSessionError> {
        self.remote(id, Remote::Send { id, buf: buf.into() })
    }

    /// Closes session `id` gracefully from outside its callbacks, as
    /// [`crate::ServerHandle::close`]; the workers run.
    pub fn close(&mut self, id: SessionId) -> Result<(), ToSessionError> {
        self.remote(id, Remote::Close { id })
    }

    fn remote(&mut self, id: SessionId, r: Remote) -> Result<(), ToSessionError> {
        let w = self
            .workers
            .get(id.worker())
            .ok_or(ToSessionError::NoSuchWorker)?;
        w.core
            .w
            .inbox
            .push(Command::Remote(r))
            .map_err(|_| ToSessionError::Stopped)?;
        self.run();
        Ok(())
    }

    /// Publishes `buf` to every subscriber of `topic`, as
    /// [`crate::ServerHandle::publish`]; the workers run.
    pub fn publish(&mut self, topic: &str, buf: impl Into<Bytes>) {
        let registry = self.workers[0].core.w.registry.clone();
        let inboxes: Vec<&dyn Control> = self
            .workers
            .iter()
            .map(|w| &*w.core.w.inbox as &dyn Control)
            .collect();
        publish_everywhere(&registry, inboxes, topic, buf.into());
        self.run();
    }

    /// Starts a graceful stop, as [`crate::ServerHandle::stop`]: no new
    /// sessions; each flushes and closes within `grace` (move the clock to
    /// see the rest reset). The workers run.
    pub fn stop(&mut self, grace: Duration) {
        for w in &self.workers {
            let _ = w.core.w.inbox.push(Command::Remote(Remote::Stop { grace }));
        }
        self.run();
    }

    /// Whether every worker has stopped and has no session left.
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(|w| w.core.finished())
    }

    /// Counters summed over the workers, as [`crate::ServerHandle::stats`].
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for w in &self.workers {
            total.add(&w.core.w.stats.snapshot());
        }
        total
    }

    /// A topic's counters, as [`crate::ServerHandle::topic`].
    pub fn topic(&self, name: &str) -> Option<TopicStats> {
        self.workers[0].core.w.registry.stats(name)
    }

    /// Time since the simulation started.
    pub fn now(&self) -> Duration {
        Tick(0).until(self.now)
    }

    /// Moves the clock by `by` at once, as if every worker had been busy
    /// that long, then runs them: what fell due meanwhile runs late (a
    /// room's tick, with its lateness and the ticks it missed).
    pub fn stall(&mut self, by: Duration) {
        self.now = self.now.after(by);
        for w in &mut self.workers {
            w.core.set_now(self.now);
        }
        self.run();
    }

    /// Moves the clock by `by`, stopping at every deadline on the way
    /// (timers, timeouts, the stop's grace) to run what is due then; the
    /// workers run at each.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now.after(by);
        loop {
            let next = self
                .workers
                .iter()
                .filter_map(|w| w.core.next_deadline())
                .min()
                .map_or(end, |t| t.min(end))
                .max(self.now);
            self.now = next;
            for w in &mut self.workers {
                w.core.set_now(next);
            }
            self.run();
            if next >= end {
                return;
            }
        }
    }

    /// Runs the workers until nothing more happens at the current time:
    /// commands, reads, writes, deadlines due, fan-out. The calls that act
    /// do this themselves.
    pub fn run(&mut self) {
        for _ in 0..MAX_TURNS {
            let before = self.signature();
            for w in &mut self.workers {
                let turn = w
                    .commands()
                    .and_then(|()| w.poll_pipes())
                    .and_then(|()| w.after_events());
                turn.expect("the simulated engine does no I/O that fails");
                self.pipes.append(&mut w.new_pipes);
            }
            if self.signature() == before {
                return;
            }
        }
        panic!(
            "the simulation did not settle in {MAX_TURNS} turns at {:?}",
            self.now()
        );
    }

    /// What a turn may change: the pipes, and each worker's sessions and
    /// counters.
    fn signature(&self) -> Signature {
        let pipes = self.pipes.iter().map(|p| p.borrow().signature()).collect();
        let workers = self
            .workers
            .iter()
            .map(|w| {
                let s = w.core.w.stats.snapshot();
                (
                    w.core.sessions.tokens().len(),
                    s.loop_turns,
                    s.messages_sent,
                    s.closed_total(),
                    w.core.rooms.iter().map(|r| r.progress()).sum::<u64>(),
                )
            })
            .collect();
        (pipes, workers)
    }

    fn pipe(&self, peer: Peer) -> &Rc<RefCell<Pipe>> {
        &self.pipes[peer.0]
    }
}
