//! The raw `io_uring_enter` and `io_uring_register` calls the io-uring
//! crate does not make for us: entering through a registered ring
//! descriptor with a timeout, and registering that descriptor.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// `io_uring_enter` flags and `io_uring_register` opcodes
/// (`include/uapi/linux/io_uring.h`) the io-uring crate does not expose
/// for a ring descriptor it did not register itself.
const ENTER_GETEVENTS: u32 = 1 << 0;
const ENTER_EXT_ARG: u32 = 1 << 3;
const ENTER_REGISTERED_RING: u32 = 1 << 4;
const REGISTER_RING_FDS: u32 = 20;
const UNREGISTER_RING_FDS: u32 = 21;

/// The kernel's `io_uring_getevents_arg`: the wait's timeout (with
/// `IORING_ENTER_EXT_ARG`).
#[repr(C)]
struct GetEventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// The kernel's `io_uring_rsrc_update`, as `IORING_REGISTER_RING_FDS`
/// reads and writes it.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// `io_uring_enter` on `ring`: submits `to_submit` entries and asks for
/// events (running deferred task work), waiting for `min_complete`
/// completions or `timeout`. Through the `registered` ring descriptor
/// index when there is one (registered by the calling thread).
pub(super) fn enter(
    ring: RawFd,
    registered: Option<u32>,
    to_submit: u32,
    min_complete: u32,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let mut flags = ENTER_GETEVENTS;
    let fd = match registered {
        Some(index) => {
            flags |= ENTER_REGISTERED_RING;
            index as libc::c_int
        }
        None => ring,
    };
    let ts;
    let arg;
    let (argp, argsz) = match timeout {
        Some(t) => {
            ts = libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            };
            arg = GetEventsArg {
                sigmask: 0,
                sigmask_sz: 0,
                min_wait_usec: 0,
                ts: &ts as *const libc::timespec as u64,
            };
            flags |= ENTER_EXT_ARG;
            (
                &arg as *const GetEventsArg as *const libc::c_void,
                std::mem::size_of::<GetEventsArg>(),
            )
        }
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `fd` is the ring's descriptor or its index registered by
    // this thread (the contract above); the
    // argument, when given, is a valid `io_uring_getevents_arg` whose
    // timespec outlives the call, with its size.
    let res = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            fd,
            to_submit,
            min_complete,
            flags,
            argp,
            argsz,
        )
    };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(res as usize)
}

/// Registers `ring`'s descriptor for this thread; returns its index.
pub(super) fn register_ring_fd(ring: RawFd) -> io::Result<u32> {
    let mut update = RsrcUpdate {
        offset: u32::MAX, // any free index
        resv: 0,
        data: ring as u64,
    };
    // SAFETY: `update` is a valid `io_uring_rsrc_update` array of one,
    // which the kernel reads and writes (the index) during the call only.
    let res = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring,
            REGISTER_RING_FDS,
            &mut update as *mut RsrcUpdate,
            1u32,
        )
    };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(update.offset)
}

/// Unregisters the registered ring descriptor `index` of this thread.
pub(super) fn unregister_ring_fd(ring: RawFd, index: u32) -> io::Result<()> {
    let update = RsrcUpdate {
        offset: index,
        resv: 0,
        data: 0,
    };
    // SAFETY: as in `register_ring_fd`; the kernel only reads `update`.
    let res = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring,
            UNREGISTER_RING_FDS,
            &update as *const RsrcUpdate,
            1u32,
        )
    };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
