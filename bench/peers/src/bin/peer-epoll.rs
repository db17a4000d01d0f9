//! The floor: the least a readiness echo server can do. One thread, one
//! epoll set (level-triggered), a read into one shared buffer, a write
//! straight back; only a partial write keeps bytes and waits for EPOLLOUT.
//! Written with rustix's safe epoll and socket calls.
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};

const LISTENER: u64 = u64::MAX;

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(iocore_peers::listen_addr())?;
    listener.set_nonblocking(true)?;
    let ep = epoll::create(CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        listener.as_fd(),
        EventData::new_u64(LISTENER),
        EventFlags::IN,
    )?;
    let mut conns: HashMap<u64, (TcpStream, Vec<u8>)> = HashMap::new();
    let mut next = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![
        Event {
            flags: EventFlags::empty(),
            data: EventData::new_u64(0)
        };
        1024
    ];
    loop {
        let n = match epoll::wait(&ep, &mut events[..], None) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let (key, flags) = (ev.data.u64(), ev.flags);
            if key == LISTENER {
                while let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(true)?;
                    s.set_nodelay(true)?;
                    epoll::add(&ep, s.as_fd(), EventData::new_u64(next), EventFlags::IN)?;
                    conns.insert(next, (s, Vec::new()));
                    next += 1;
                }
                continue;
            }
            let Some((s, pending)) = conns.get_mut(&key) else {
                continue;
            };
            let mut dead = false;
            if flags.contains(EventFlags::OUT) && !pending.is_empty() {
                match s.write(pending) {
                    Ok(w) => drop(pending.drain(..w)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => dead = true,
                }
                if pending.is_empty() {
                    epoll::modify(&ep, s.as_fd(), EventData::new_u64(key), EventFlags::IN)?;
                }
            }
            if !dead
                && pending.is_empty()
                && flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR)
            {
                match s.read(&mut buf) {
                    Ok(0) => dead = true,
                    Ok(r) => match s.write(&buf[..r]) {
                        Ok(w) if w == r => {}
                        Ok(w) => {
                            pending.extend_from_slice(&buf[w..r]);
                            epoll::modify(&ep, s.as_fd(), EventData::new_u64(key), EventFlags::OUT)?;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            pending.extend_from_slice(&buf[..r]);
                            epoll::modify(&ep, s.as_fd(), EventData::new_u64(key), EventFlags::OUT)?;
                        }
                        Err(_) => dead = true,
                    },
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => dead = true,
                }
            }
            if dead {
                conns.remove(&key);
            }
        }
    }
}
