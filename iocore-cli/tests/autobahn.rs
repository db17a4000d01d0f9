//! WebSocket conformance: the Autobahn testsuite's server cases 1–7
//! (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close
//! handling), 9 (limits: messages up to 16 MiB, in frames of every size)
//! and 10 (auto-fragmentation) against `iocore serve --app echo --ws`, on
//! each Linux engine. kosoku runs the cases (the Python 2 suite does not
//! install here; `.ci/test` installs kosoku into target/ci-python). Every
//! case must be OK, NON-STRICT or INFORMATIONAL, its close too; the report
//! is written under target/ (see `conformance/autobahn.md` for the last
//! one kept). Cases 12–13 test permessage-deflate, which is not built.
//! Linux only: kosoku is a Linux program; the Windows engines run the
//! same session layer through tests/websocket.rs of the library.
#![cfg(target_os = "linux")]

use std::time::Duration;

use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

/// The cases run: every case of these sections.
const SECTIONS: &[&str] = &["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"];
/// How many cases those sections hold.
const CASES: usize = 301;

fn autobahn(engine: &str) {
    let python = python_tools();
    let kosoku = python.with_file_name("kosoku");
    // Room for the 16 MiB messages of section 9, echoed whole.
    let server = CliServer::start(
        BIN,
        &[
            "--engine",
            engine,
            "--app",
            "echo",
            "--ws",
            "127.0.0.1:0",
            "--ws-max-message",
            "16MiB",
            "--max-send-queue",
            "64MiB",
            "--send-high-watermark",
            "32MiB",
            "--send-low-watermark",
            "16MiB",
        ],
        &[],
    );
    let ws = server.logged_addr("serving WebSocket clients");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("autobahn-{engine}"));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = std::process::Command::new(&kosoku);
    cmd.args(["-m", "fuzzingclient", "-p", "4", "-o"]).arg(&out);
    for s in SECTIONS {
        cmd.args(["-i", s]);
    }
    cmd.arg(ws.to_string());
    let run = run_bounded(&mut cmd, Duration::from_secs(600));
    assert!(run.status.success(), "kosoku failed: {}", run.output());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).expect("kosoku's index.json")).unwrap();
    let cases = index
        .as_object()
        .unwrap()
        .values()
        .next()
        .expect("one agent")
        .as_object()
        .unwrap();
    assert_eq!(cases.len(), CASES, "cases run: {}", run.output());
    let acceptable = ["OK", "NON-STRICT", "INFORMATIONAL"];
    let mut bad = Vec::new();
    for (case, result) in cases {
        for field in ["behavior", "behaviorClose"] {
            let said = result[field].as_str().unwrap_or("missing");
            if !acceptable.contains(&said) {
                bad.push(format!("{case} {field}={said}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "Autobahn cases failed on {engine}: {bad:?} (report in {})",
        out.display()
    );
    let (status, _) = server.stop();
    assert!(status.success());
}

#[test]
fn epoll() {
    autobahn("epoll");
}

#[test]
fn uring() {
    autobahn("uring");
}
