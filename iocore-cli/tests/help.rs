//! The documentation and the parser agree. Every range an option's help
//! states — "(13 to 65535", "(1 to 64MiB", "(at least 1" — is what the
//! parser takes: both bounds accepted, one past them refused (checked with
//! `--check`, which validates and exits without starting anything). And
//! README's synopsis names every option of every subcommand, so a new flag
//! cannot go undocumented there.

use std::process::Command;
use std::time::Duration;

use iocore_testkit::run_bounded;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");
const SUBCOMMANDS: [&str; 6] = ["serve", "client", "chat", "bench", "top", "soak"];
const LIMIT: Duration = Duration::from_secs(60);

/// An option of a subcommand and its help text, on one line.
struct Opt {
    flag: String,
    help: String,
}

/// The options `iocore SUB --help` lists.
fn options(sub: &str) -> Vec<Opt> {
    let run = run_bounded(Command::new(BIN).args([sub, "--help"]), LIMIT);
    assert!(run.status.success(), "{}", run.output());
    let mut opts: Vec<Opt> = Vec::new();
    for line in run.stdout.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('-') && indent < 8 {
            let flag = trimmed
                .split([' ', ','])
                .find(|t| t.starts_with("--"))
                .unwrap_or_default()
                .to_string();
            opts.push(Opt {
                flag,
                help: String::new(),
            });
        } else if let Some(opt) = opts.last_mut() {
            opt.help.push(' ');
            opt.help.push_str(trimmed);
        }
    }
    for o in &mut opts {
        o.help = o.help.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    opts
}

/// A number with an optional binary unit ("64MiB"): its value and the rest.
fn number(s: &str) -> Option<(u128, &str)> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let value: u128 = s[..digits].parse().ok()?;
    let rest = &s[digits..];
    for (unit, scale) in [("KiB", 1u128 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)] {
        if let Some(after) = rest.strip_prefix(unit) {
            return Some((value * scale, after));
        }
    }
    Some((value, rest))
}

/// The range a help text states: "(A to B" or "(at least A" (B: `None`).
fn range(help: &str) -> Option<(u128, Option<u128>)> {
    help.match_indices('(').find_map(|(i, _)| {
        let text = &help[i + 1..];
        if let Some(rest) = text.strip_prefix("at least ") {
            let (low, _) = number(rest)?;
            return Some((low, None));
        }
        let (low, rest) = number(text)?;
        let (high, _) = number(rest.strip_prefix(" to ")?)?;
        Some((low, Some(high)))
    })
}

/// Arguments an option needs beside it to be valid at all.
fn context(sub: &str, flag: &str) -> &'static [&'static str] {
    match (sub, flag) {
        ("serve", "--max-packet") => &["--app", "chat"],
        ("serve", "--room-size" | "--tick-rate" | "--rejoin-grace") => &["--app", "arena"],
        ("soak", _) => &["--engine", "epoll"],
        ("serve", "--max-send-queue") => &["--send-high-watermark", "1", "--send-low-watermark", "0"],
        _ => &[],
    }
}

/// Whether `iocore SUB CONTEXT FLAG VALUE --check` is accepted.
fn accepted(sub: &str, flag: &str, value: u128) -> bool {
    let run = run_bounded(
        Command::new(BIN)
            .arg(sub)
            .args(context(sub, flag))
            .args([flag, &value.to_string(), "--check"]),
        LIMIT,
    );
    // Exit 1 (refused by a check) or 2 (refused by the parser); anything
    // else (a signal, a panic) is a failure of its own.
    assert!(
        matches!(run.status.code(), Some(0..=2)) && !run.stderr.contains("panicked"),
        "{sub} {flag} {value}: {}",
        run.output()
    );
    // `soak --check` validates its arguments before it looks at the
    // machine: a refusal for want of root or Linux means the value passed.
    run.status.success()
        || (sub == "soak"
            && (run.stderr.contains("iocore soak needs root")
                || run.stderr.contains("iocore soak runs on Linux only")))
}

#[test]
fn every_documented_range_is_what_the_parser_takes() {
    let mut checked = Vec::new();
    for sub in SUBCOMMANDS {
        for opt in options(sub) {
            let Some((low, high)) = range(&opt.help) else {
                continue;
            };
            let flag = opt.flag.as_str();
            assert!(
                accepted(sub, flag, low),
                "{sub} {flag} {low} is in '{}'",
                opt.help
            );
            if low > 0 {
                assert!(
                    !accepted(sub, flag, low - 1),
                    "{sub} {flag} {} is below '{}'",
                    low - 1,
                    opt.help
                );
            }
            if let Some(high) = high {
                assert!(
                    accepted(sub, flag, high),
                    "{sub} {flag} {high} is in '{}'",
                    opt.help
                );
                assert!(
                    !accepted(sub, flag, high + 1),
                    "{sub} {flag} {} is above '{}'",
                    high + 1,
                    opt.help
                );
            }
            checked.push(format!("{sub} {flag}"));
        }
    }
    // The ranges the help states today; a help that lost its range shows
    // here (this list grows with them).
    for want in [
        "serve --max-packet",
        "serve --threads",
        "serve --max-sessions",
        "serve --max-sessions-per-ip",
        "serve --max-send-queue",
        "serve --max-recv-buffer",
        "client --rooms",
        "client --size",
        "client --pipeline",
        "client --connections",
        "client --count",
        "client --threads",
        "bench --rounds",
    ] {
        assert!(
            checked.iter().any(|c| c == want),
            "{want} states no range: {checked:?}"
        );
    }
}

#[test]
fn readme_synopsis_names_every_option() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("## CLI").expect("README has a CLI section");
    let block: String = readme[start..]
        .lines()
        .skip(1)
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with("    "))
        .collect::<Vec<_>>()
        .join("\n");
    for sub in SUBCOMMANDS {
        for opt in options(sub) {
            if opt.flag.is_empty() || opt.flag == "--help" || opt.flag == "--version" {
                continue;
            }
            assert!(
                block.contains(&opt.flag),
                "README's synopsis lacks `{sub} {}`:\n{block}",
                opt.flag
            );
        }
    }
}
