#![cfg(target_os = "linux")]
//! `iocore soak` refuses clearly what it cannot do: run without root, or
//! without iptables (it says what to install). The soak itself runs in
//! `.ci/soak` (every mode, every engine).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use iocore_testkit::run_bounded;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

/// A directory of links to the programs the check needs, but `iptables`.
fn path_without_iptables() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("iocore-soak-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for program in ["sh", "id", "ip"] {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(program))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{program} is not installed"));
        let link = dir.join(program);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(found, link).unwrap();
    }
    dir
}

#[test]
fn without_iptables_it_says_what_to_install() {
    let dir = path_without_iptables();
    let run = run_bounded(
        Command::new(BIN)
            .args(["soak", "--engine", "epoll", "--check"])
            .env("PATH", &dir),
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(run.status.code(), Some(1), "{}", run.output());
    assert!(
        run.stderr.contains("install the Debian package iptables"),
        "{}",
        run.output()
    );
}

#[test]
fn without_root_it_says_so() {
    // As the user nobody, if this test runs as root (CI does); otherwise
    // as the user running it.
    let mut cmd = match run_bounded(Command::new("id").arg("-u"), Duration::from_secs(5))
        .stdout
        .trim()
    {
        "0" => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
            c
        }
        _ => Command::new(BIN),
    };
    let run = run_bounded(
        cmd.args(["soak", "--engine", "epoll", "--check"]),
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.output());
    assert!(run.stderr.contains("needs root"), "{}", run.output());
}
