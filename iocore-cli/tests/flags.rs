//! Flags mean what they say or are refused, in the user's words: the
//! message names the flag typed (never a library field), says what is
//! wanted, and nothing starts (each case runs with `--check`, which
//! validates and exits). Addresses take a host name or a bare port
//! wherever an address is taken.

use std::process::Command;
use std::time::Duration;

use iocore_testkit::{run_bounded, Run};

const BIN: &str = env!("CARGO_BIN_EXE_iocore");
const LIMIT: Duration = Duration::from_secs(60);

fn check(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_bounded(
        Command::new(BIN)
            .args(args)
            .arg("--check")
            .envs(env.iter().copied()),
        LIMIT,
    )
}

#[test]
fn mistakes_are_refused_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        // A typo in a level silenced every line, the ready line included.
        (
            &["--log-level", "warning", "serve"],
            "unknown log level 'warning'",
        ),
        (
            &["--log-level", "iocore=loud", "serve"],
            "unknown log level 'loud'",
        ),
        (
            &["serve", "--max-packet", "100"],
            "--max-packet is for --app chat",
        ),
        (&["serve", "--max-packet", "12", "--app", "chat"], "13..=65535"),
        (
            &["serve", "--idle-timeout", "0"],
            "--idle-timeout must be above zero",
        ),
        (
            &["serve", "--max-send-queue", "0"],
            "--max-send-queue must be between 1 byte and 2 GiB",
        ),
        (
            &["serve", "--send-high-watermark", "2MiB"],
            "--send-high-watermark (2097152 bytes) must not exceed",
        ),
        (
            &["serve", "--redis", "bogus"],
            "--redis 'bogus' is not a Redis URL: use redis://",
        ),
        (&["serve", "--addr", "127.0.0.1"], "no port"),
        (&["client", "--count", "0"], "'0' for '--count"),
        (
            &["client", "--rate", "5", "--interval", "1s"],
            "cannot be used with",
        ),
        (
            &["client", "--warmup", "5s", "--duration", "2s"],
            "--warmup (5s) must be shorter than --duration",
        ),
        #[cfg(target_os = "linux")]
        (
            &["client", "--server-pid", "4194304"],
            "--server-pid 4194304: no such process",
        ),
        #[cfg(not(target_os = "linux"))]
        (
            &["client", "--server-pid", "1"],
            "--server-pid: process CPU and memory readings are implemented for Linux only",
        ),
        (
            &["client", "--size", "1GiB"],
            "--size must be between 1 byte and 64MiB",
        ),
        (
            &["client", "--scenario", "chat", "--rooms", "3"],
            "--rooms 3 is more than --connections 1",
        ),
        (&["client", "--scenario", "chat"], "give --count or --duration"),
        (&["chat", "--room", ""], "a room needs a name"),
        (&["bench", "--servers", "nginx"], "unknown server 'nginx'"),
        (&["bench", "--points", "nope"], "no bench point is named 'nope'"),
        (
            &["bench", "--coalesce", "2s"],
            "--coalesce must be between 1ms and 1s",
        ),
        (&["top", "--interval", "0s"], "--interval must be above 0"),
    ];
    for (args, said) in cases {
        let run = check(args, &[]);
        assert!(
            matches!(run.status.code(), Some(1 | 2)),
            "{args:?} is refused: {}",
            run.output()
        );
        assert!(
            run.stderr.contains(said),
            "{args:?} says {said:?}: {}",
            run.output()
        );
        for field in ["max_send_queue", "send_high_watermark", "idle_timeout", "None"] {
            assert!(
                !run.stderr.contains(field),
                "{args:?} names a library field: {}",
                run.output()
            );
        }
    }
}

/// An unknown name in IOCORE_URING_OFF is refused with the known ones,
/// for `auto` too (before, auto fell back to epoll without a word).
#[cfg(target_os = "linux")]
#[test]
fn an_unknown_uring_feature_is_refused_also_for_auto() {
    for engine in ["auto", "uring"] {
        let run = check(
            &["serve", "--engine", engine],
            &[("IOCORE_URING_OFF", "ring-fd,bogus")],
        );
        assert_eq!(run.status.code(), Some(1), "{}", run.output());
        assert!(
            run.stderr.contains("unknown io_uring feature 'bogus'") && run.stderr.contains("known:"),
            "{}",
            run.output()
        );
    }
}

/// Addresses take a host name or a bare port (127.0.0.1) wherever one is
/// taken; good values pass the check.
#[test]
fn addresses_take_host_names_and_bare_ports() {
    let good: &[&[&str]] = &[
        &["serve", "--addr", "localhost:7777"],
        &["serve", "--addr", "7777"],
        &["serve", "--metrics", "9464"],
        &["serve", "--metrics", "localhost:9464"],
        &["client", "--addr", "localhost:7777"],
        &["client", "--addr", "7777", "--size", "1MiB"],
        &[
            "client",
            "--scenario",
            "chat",
            "--addr",
            "7001,localhost:7002",
            "--connections",
            "2",
            "--count",
            "1",
        ],
        &["chat", "--addr", "localhost:7777"],
        &["top", "--metrics", "9464"],
        &["--log-level", "iocore=debug,warn", "serve"],
    ];
    for args in good {
        let run = check(args, &[]);
        assert!(run.status.success(), "{args:?}: {}", run.output());
        assert!(run.stdout.contains("arguments OK"), "{args:?}: {}", run.output());
    }
}
