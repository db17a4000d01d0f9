//! The load client always ends, by itself, with its summary and a
//! non-zero exit when the run failed: whatever the server does (never
//! answers, is not a chat server, goes away), on one Ctrl-C, and on input
//! a machine cannot serve (refused with a message naming the flag, never
//! a panic or an abort). Each run is the binary, as a user runs it, with a
//! bound around it: a run that does not end by itself is killed and the
//! test fails.
#![cfg(unix)]

use std::process::Command;
use std::time::Duration;

use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");
/// Every run here ends by itself within a few seconds; past this it hung.
const LIMIT: Duration = Duration::from_secs(60);

fn client(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("client").args(args);
    c
}

/// The run failed (exit 1, not a signal) and said so in its summary.
fn failed_with(run: &Run, what: &str) {
    assert_eq!(run.status.code(), Some(1), "{}", run.output());
    assert!(run.stdout.contains("FAILED"), "{}", run.output());
    assert!(run.stdout.contains(what), "expected {what:?}: {}", run.output());
}

/// A closed loop against a server that takes messages and never answers
/// (`serve --app sink`): with --duration it ends at the duration plus the
/// drain timeout, counting what never came back; with --count only, once
/// nothing came back for the drain timeout.
#[test]
fn a_closed_loop_against_a_silent_server_ends_and_fails() {
    let sink = CliServer::start(BIN, &["--app", "sink", "--threads", "1"], &[]);
    let addr = sink.addr.to_string();
    let run = run_bounded(
        &mut client(&[
            "--addr",
            &addr,
            "--pipeline",
            "1",
            "--duration",
            "1s",
            "--drain-timeout",
            "1s",
        ]),
        LIMIT,
    );
    failed_with(&run, "1 never came back");
    let run = run_bounded(
        &mut client(&[
            "--addr",
            &addr,
            "--pipeline",
            "4",
            "--count",
            "10",
            "--drain-timeout",
            "1s",
        ]),
        LIMIT,
    );
    failed_with(&run, "the server stopped answering");
    failed_with(&run, "4 never came back");
}

/// The chat scenario against an echo or a sink server (no JOINED ever
/// comes) ends and says what the server is not.
#[test]
fn the_chat_scenario_against_a_server_that_is_not_a_chat_server_ends_and_fails() {
    for app in ["echo", "sink"] {
        let server = CliServer::start(BIN, &["--app", app, "--threads", "1"], &[]);
        let addr = server.addr.to_string();
        let run = run_bounded(
            &mut client(&[
                "--scenario",
                "chat",
                "--addr",
                &addr,
                "--connections",
                "3",
                "--duration",
                "1s",
                "--drain-timeout",
                "1s",
            ]),
            LIMIT,
        );
        failed_with(&run, "no JOINED from the server");
    }
}

/// Starts `iocore client ARGS`, does `meanwhile`, then waits (bounded) for
/// the client to end by itself: it must fail (exit 1) with its summary.
fn ends_failing_after(args: &[&str], meanwhile: impl FnOnce(u32), why: &str) {
    let mut child = spawn(client(args).stdout(std::process::Stdio::piped()));
    meanwhile(child.id());
    let status = wait_bounded(&mut child, LIMIT).unwrap_or_else(|| panic!("{why}: killed after {LIMIT:?}"));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(status.code(), Some(1), "{why}: {out}");
    assert!(
        out.contains("connections:") && out.contains("FAILED"),
        "{why}: {out}"
    );
}

/// One Ctrl-C (SIGINT) ends a run that has no end of its own, against a
/// server that never answers, with its summary.
#[test]
fn one_ctrl_c_ends_the_run_with_its_summary() {
    let sink = CliServer::start(BIN, &["--app", "sink", "--threads", "1"], &[]);
    let addr = sink.addr.to_string();
    let ctrl_c = |pid: u32| {
        std::thread::sleep(Duration::from_millis(500));
        let kill = Command::new("kill").args(["-INT", &pid.to_string()]).status();
        assert!(kill.unwrap().success());
    };
    let args = ["--addr", &addr, "--pipeline", "1", "--drain-timeout", "1s"];
    ends_failing_after(&args, ctrl_c, "one Ctrl-C ends the run");
}

/// The open loop (no count, no duration) notices when every connection is
/// gone (the server stopped) and ends with FAILED.
#[test]
fn the_open_loop_ends_when_every_connection_is_gone() {
    let server = CliServer::start(BIN, &["--threads", "1"], &[]);
    let addr = server.addr.to_string();
    let stop_server = move |_| {
        std::thread::sleep(Duration::from_secs(1));
        assert!(server.stop().0.success());
    };
    let args = ["--addr", &addr, "--connections", "3", "--interval", "10ms"];
    ends_failing_after(
        &args,
        stop_server,
        "the client ends once its connections are gone",
    );
}

/// Counts no machine can serve are refused before anything starts, with a
/// message naming the flag: no panic, no abort.
#[test]
fn counts_beyond_the_machine_are_refused_with_a_message() {
    let cases: [(&[&str], &str); 5] = [
        (&["--connections", "99999999999"], "--connections"),
        (&["--size", "65MiB"], "--size"),
        (&["--rate", "1e12"], "--rate"),
        (&["--duration", "99999999d"], "--duration"),
        (&["--pipeline", "65536", "--size", "64MiB"], "--size"),
    ];
    for (args, flag) in cases {
        let run = run_bounded(&mut client(args), LIMIT);
        assert_eq!(
            run.status.code(),
            Some(if flag == "--duration" { 2 } else { 1 }),
            "{args:?}: {}",
            run.output()
        );
        assert!(
            run.stderr.contains("error:") && run.stderr.contains(flag),
            "{args:?}: {}",
            run.output()
        );
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.output());
    }
}

/// The client raises its open-file limit to the hard limit, as `serve`
/// does; when even that is short, it says so before connecting, naming
/// the limit.
#[test]
fn the_open_file_limit_is_raised_and_a_short_one_is_named() {
    let server = CliServer::start(BIN, &["--threads", "1"], &[]);
    let addr = server.addr.to_string();
    let in_shell = |limits: &str, connections: &str| {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("{limits} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(["client", "--addr", &addr, "--pipeline", "1", "--count", "2"])
            .args(["--connections", connections]);
        sh
    };
    // A soft limit of 256 with 500 connections: raised to the hard limit.
    let run = run_bounded(&mut in_shell("ulimit -Sn 256", "500"), LIMIT);
    assert!(run.status.success(), "{}", run.output());
    assert!(run.stdout.contains("500 connected"), "{}", run.output());
    // A hard limit of 256: refused before connecting, naming the limit.
    let run = run_bounded(&mut in_shell("ulimit -n 256", "500"), LIMIT);
    assert_eq!(run.status.code(), Some(1), "{}", run.output());
    assert!(
        run.stderr
            .contains("--connections 500 needs about 564 open files")
            && run.stderr.contains("256"),
        "{}",
        run.output()
    );
    assert!(
        !run.stdout.contains("connected"),
        "nothing was connected: {}",
        run.output()
    );
}

/// Sizes take units, and a message over 1 MiB is echoed whole (the
/// client's send queue is sized for what is in flight).
#[test]
fn message_sizes_take_units_and_large_ones_are_echoed() {
    let server = CliServer::start(BIN, &["--threads", "1", "--max-send-queue", "8MiB"], &[]);
    let addr = server.addr.to_string();
    for (size, pipeline) in [("1MiB", "1"), ("2MiB", "2")] {
        let run = run_bounded(
            &mut client(&[
                "--addr",
                &addr,
                "--size",
                size,
                "--pipeline",
                pipeline,
                "--count",
                "3",
                "--verify",
            ]),
            LIMIT,
        );
        assert!(run.status.success(), "--size {size}: {}", run.output());
        assert!(run.stdout.contains("0 mismatched, 0 lost"), "{}", run.output());
    }
}
