//! Rooms that come and go give their memory back: after 10,000 rooms have
//! been made, joined, left and disposed, the bytes the process holds are
//! back at what they were before (counted by this test binary's
//! allocator). A binary of its own, its tests one at a time, so that no
//! other test's allocations are counted.

use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use iocore::room::{Room, RoomCx, Rooms};
use iocore::{EngineKind, SessionId};
use iocore_testkit::*;
use tracking_allocator::{AllocationGroupId, AllocationRegistry, AllocationTracker, Allocator};

#[global_allocator]
static GLOBAL: Allocator<std::alloc::System> = Allocator::system();

/// The bytes held, counted from when tracking began (what was allocated
/// before and freed since counts below zero; the test compares two counts).
static HELD: AtomicIsize = AtomicIsize::new(0);

/// Counts the bytes every thread allocates and frees.
struct HeldCounter;

impl AllocationTracker for HeldCounter {
    fn allocated(&self, _addr: usize, object_size: usize, _wrapped_size: usize, _group: AllocationGroupId) {
        HELD.fetch_add(object_size as isize, Ordering::Relaxed);
    }
    fn deallocated(
        &self,
        _addr: usize,
        object_size: usize,
        _wrapped_size: usize,
        _source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
        HELD.fetch_sub(object_size as isize, Ordering::Relaxed);
    }
}

/// Starts counting, once per process.
fn count_held() {
    static START: Once = Once::new();
    START.call_once(|| {
        AllocationRegistry::set_global_tracker(HeldCounter).expect("the only tracker");
        AllocationRegistry::enable_tracking();
    });
}

/// One test at a time: the count is the whole process's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A room with a little state of its own.
struct Table {
    seats: Vec<u64>,
}

impl Room for Table {
    type Msg = u64;
    fn on_join(&mut self, _: &mut RoomCx<'_, u64>, member: SessionId) {
        self.seats.push(member.as_u64());
    }
    fn on_message(&mut self, _: &mut RoomCx<'_, u64>, _: Option<SessionId>, n: u64) {
        self.seats.push(n);
    }
}

/// Makes `n` rooms, each joined, posted to and left, and waits until every
/// one is disposed.
fn come_and_go(rooms: &Rooms<Table>, n: usize, round: usize) {
    let member = SessionId::from_u64(1);
    for i in 0..n {
        let room = rooms.get(&format!("table-{round}-{i}")).unwrap();
        room.join(member).unwrap();
        room.post(None, i as u64).unwrap();
        room.leave(member).unwrap();
    }
    wait_until("every room disposed", || {
        let s = rooms.stats();
        s.rooms == 0 && s.jobs_run as usize >= 3 * n * (round + 1)
    });
}

fn rooms_that_came_and_went_give_their_memory_back(engine: EngineKind) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    count_held();
    let rooms = Rooms::new(|_| Table { seats: Vec::new() }).dispose_after(Duration::from_millis(20));
    let server = server(engine).rooms(&rooms).start(|| Echo).unwrap();
    // A first round sizes what stays (the workers' scratch buffers).
    come_and_go(&rooms, 10_000, 0);
    let before = HELD.load(Ordering::SeqCst);
    come_and_go(&rooms, 10_000, 1);
    // 10,000 live rooms hold over a megabyte; once the worker has finished
    // the turn that disposed of the last, what may differ is a buffer's
    // spare room (a few kilobytes).
    let more = || HELD.load(Ordering::SeqCst) - before;
    wait_until("the memory back", || more() < 16 * 1024);
    server.shutdown(Duration::from_secs(1)).unwrap();
}

engine_suite!(rooms_that_came_and_went_give_their_memory_back);
