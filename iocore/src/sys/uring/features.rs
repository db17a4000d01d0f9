//! The optional io_uring features a ring uses, and the environment
//! variable that turns each off.

use std::fmt;
use std::io;

/// The environment variable that turns optional io_uring features off, a
/// comma-separated list of [`Features::NAMES`] (for tests of the fallback
/// paths, and for operators who suspect one of them).
pub const FEATURES_OFF_VAR: &str = "IOCORE_URING_OFF";

/// The optional io_uring features a ring uses: each is used where the
/// kernel has it, unless [`FEATURES_OFF_VAR`] names it; a kernel that
/// lacks one falls back to what it replaces (logged once per ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (6.1):
    /// completions' task work runs only when the worker asks for events,
    /// in its own `io_uring_enter`, never by interrupting it. Without it:
    /// `COOP_TASKRUN | SINGLE_ISSUER` (5.19, 6.0), else neither.
    pub defer_taskrun: bool,
    /// A registered ring descriptor (`IORING_REGISTER_RING_FDS`, 5.18):
    /// `io_uring_enter` skips looking the ring's descriptor up.
    pub ring_fd: bool,
    /// A send of one buffer is a plain `IORING_OP_SEND` rather than a
    /// one-element `SENDMSG` (the kernel copies no header).
    pub plain_send: bool,
    /// Sessions' sockets sit in a registered file table (a sparse
    /// `IORING_REGISTER_FILES`, 5.19) and operations name them by slot:
    /// the kernel skips looking the descriptor up and taking a reference
    /// to the socket per operation. Sessions beyond the table's size
    /// (the soft `RLIMIT_NOFILE`, at most 65,536) go by descriptor.
    pub fixed_files: bool,
    /// Multishot receives take a bundle of provided buffers per
    /// completion (`IORING_RECVSEND_BUNDLE`, 6.10) rather than one: a
    /// burst larger than a buffer is one completion. Only with
    /// [`Features::defer_taskrun`], where the kernel takes buffers only
    /// inside the worker's own `io_uring_enter` (rule 2).
    pub recv_bundle: bool,
}

impl Features {
    /// The names [`FEATURES_OFF_VAR`] takes.
    pub const NAMES: &'static [&'static str] = &[
        "defer-taskrun",
        "ring-fd",
        "plain-send",
        "fixed-files",
        "recv-bundle",
    ];

    /// Every feature, as asked when nothing is turned off.
    pub const ALL: Features = Features {
        defer_taskrun: true,
        ring_fd: true,
        plain_send: true,
        fixed_files: true,
        recv_bundle: true,
    };

    /// The features left after turning off those `off` names (a
    /// comma-separated list); an unknown name is an error that lists the
    /// known ones.
    pub fn without(off: &str) -> io::Result<Features> {
        let mut f = Features::ALL;
        for name in off.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "defer-taskrun" => f.defer_taskrun = false,
                "ring-fd" => f.ring_fd = false,
                "plain-send" => f.plain_send = false,
                "fixed-files" => f.fixed_files = false,
                "recv-bundle" => f.recv_bundle = false,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "unknown io_uring feature '{name}' in {FEATURES_OFF_VAR} (known: {})",
                            Features::NAMES.join(", ")
                        ),
                    ))
                }
            }
        }
        Ok(f)
    }

    /// The features asked for: all, less what [`FEATURES_OFF_VAR`] names.
    pub fn from_env() -> io::Result<Features> {
        match std::env::var(FEATURES_OFF_VAR) {
            Ok(off) => Features::without(&off),
            Err(_) => Ok(Features::ALL),
        }
    }
}

impl fmt::Display for Features {
    /// `defer-taskrun=on ring-fd=off ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = [
            self.defer_taskrun,
            self.ring_fd,
            self.plain_send,
            self.fixed_files,
            self.recv_bundle,
        ];
        for (i, (name, on)) in Features::NAMES.iter().zip(on).enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={}", if on { "on" } else { "off" })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_turned_off_by_name() {
        assert_eq!(Features::without("").unwrap(), Features::ALL);
        let f = Features::without(" ring-fd,plain-send ").unwrap();
        assert!(f.defer_taskrun && !f.ring_fd && !f.plain_send);
        assert_eq!(
            f.to_string(),
            "defer-taskrun=on ring-fd=off plain-send=off fixed-files=on recv-bundle=on"
        );
        let e = Features::without("defer-taskrun,nope").unwrap_err();
        assert!(
            e.to_string().contains("'nope'") && e.to_string().contains("ring-fd"),
            "{e}"
        );
    }
}
