//! The registered file table (rule 6 of [`super`]): sessions' sockets
//! named by slot.

use std::os::fd::RawFd;

/// A socket's slot in the ring's registered file table
/// ([`Features::fixed_files`](super::Features::fixed_files)), or
/// [`FileSlot::NONE`]: what a session keeps beside its descriptor (4
/// bytes). [`Uring::attach`](super::Uring::attach) gives it;
/// [`Uring::detach`](super::Uring::detach) ends it (rule 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileSlot(u32);

impl FileSlot {
    /// Not in the table: operations name the socket by descriptor. (A
    /// table has at most 65,536 slots, so this is never a real one.)
    pub(crate) const NONE: FileSlot = FileSlot(u32::MAX);

    pub(super) fn new(slot: u32) -> FileSlot {
        debug_assert!(slot != u32::MAX);
        FileSlot(slot)
    }

    /// The slot, if the socket is in the table.
    pub(super) fn get(self) -> Option<u32> {
        (self != FileSlot::NONE).then_some(self.0)
    }
}

/// A socket as the ring's operations name it: its descriptor and its
/// [`FileSlot`]; by slot when it has one, else by descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileRef {
    pub(super) fd: RawFd,
    pub(super) slot: FileSlot,
}

impl FileRef {
    /// Socket `fd`, in the table at `slot` (or not: [`FileSlot::NONE`]).
    pub(crate) fn new(fd: RawFd, slot: FileSlot) -> FileRef {
        FileRef { fd, slot }
    }
}

/// What a detach writes into a table slot: no file.
pub(super) static NO_FILE: RawFd = -1;

/// The registered file table: per slot the descriptor its install update
/// reads (rule 1: the cells live as long as the ring), and the free
/// slots.
pub(super) struct FileTable {
    pub(super) fds: Box<[RawFd]>,
    pub(super) free: Vec<u32>,
    pub(super) full_logged: bool,
}

/// Slots in a worker's file table: the soft `RLIMIT_NOFILE` (the kernel
/// refuses a larger table), at most 65,536.
pub(super) fn file_table_size() -> u32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit the call writes.
    let res = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if res != 0 {
        return 1024;
    }
    limit.rlim_cur.clamp(1, 1 << 16) as u32
}
