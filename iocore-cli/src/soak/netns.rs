//! A network namespace of the soak's own, joined to this one by a veth
//! pair with addresses of its own (198.18.0.0/15, the range set aside for
//! benchmarks): the server runs inside, the client outside, and loss is
//! applied inside with iptables. Everything made here is removed when the
//! [`Netns`] is dropped — on success, failure or Ctrl-C — and the removal
//! is checked.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Runs `args` (a program and its arguments) and returns its output; an
/// error says what failed and what it printed.
pub fn run(args: &[&str]) -> io::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", args[0])))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process may make namespaces and iptables rules, and the
/// programs are there; otherwise what to do, in words.
pub fn check_can_run() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("iocore soak runs on Linux only (network namespaces, iptables): run the Linux build as root; it drives the Windows build's server under Wine (--server-binary)".into());
    }
    if !is_root() {
        return Err("iocore soak needs root (it makes a network namespace and iptables rules): run it as root, e.g. with sudo".into());
    }
    for (program, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        if run(&["sh", "-c", &format!("command -v {program}")]).is_err() {
            return Err(format!(
                "iocore soak needs `{program}`: install the Debian package {package} (apt-get install {package})"
            ));
        }
    }
    Ok(())
}

fn is_root() -> bool {
    run(&["id", "-u"]).is_ok_and(|uid| uid.trim() == "0")
}

/// The namespace, its veth pair and their addresses.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
    made_ns: bool,
    made_link: bool,
}

impl Netns {
    /// Makes the namespace `iocsoak<tag>` and a /30 between it and here.
    pub fn create(tag: u32) -> io::Result<Netns> {
        let net = (tag % 250 + 1) as u8;
        let mut ns = Netns {
            name: format!("iocsoak{tag}"),
            host_if: format!("isk{tag}h"),
            ns_if: format!("isk{tag}n"),
            host_addr: Ipv4Addr::new(198, 18, net, 1),
            ns_addr: Ipv4Addr::new(198, 18, net, 2),
            made_ns: false,
            made_link: false,
        };
        run(&["ip", "netns", "add", &ns.name])?;
        ns.made_ns = true;
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        ns.made_link = true;
        run(&["ip", "link", "set", &ns.ns_if, "netns", &ns.name])?;
        let host = format!("{}/30", ns.host_addr);
        run(&["ip", "addr", "add", &host, "dev", &ns.host_if])?;
        run(&["ip", "link", "set", &ns.host_if, "up"])?;
        let inside = format!("{}/30", ns.ns_addr);
        ns.exec(&["ip", "addr", "add", &inside, "dev", &ns.ns_if])?;
        ns.exec(&["ip", "link", "set", &ns.ns_if, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The command line that runs `args` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Drops `percent` % of the server port's packets, at random, each way.
    pub fn lose(&self, port: u16, percent: f64) -> io::Result<()> {
        let p = format!("{}", percent / 100.0);
        let port = port.to_string();
        for (chain, dir) in [("INPUT", "--dport"), ("OUTPUT", "--sport")] {
            self.exec(&[
                "iptables",
                "-A",
                chain,
                "-p",
                "tcp",
                dir,
                &port,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    /// Drops everything to and from the client port `peer_port`.
    pub fn blackhole(&self, peer_port: u16) -> io::Result<()> {
        let port = peer_port.to_string();
        self.exec(&[
            "iptables", "-I", "INPUT", "-p", "tcp", "--sport", &port, "-j", "DROP",
        ])?;
        self.exec(&[
            "iptables", "-I", "OUTPUT", "-p", "tcp", "--dport", &port, "-j", "DROP",
        ])?;
        Ok(())
    }

    /// The processes in the namespace.
    pub fn exec_pids(&self) -> Option<Vec<u32>> {
        let out = run(&["ip", "netns", "pids", &self.name]).ok()?;
        Some(out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
    }

    /// Packets the namespace's rules dropped so far (both chains).
    pub fn dropped(&self) -> u64 {
        let mut n = 0;
        for chain in ["INPUT", "OUTPUT"] {
            let Ok(text) = self.exec(&["iptables", "-L", chain, "-v", "-x", "-n"]) else {
                continue;
            };
            for line in text.lines().filter(|l| l.contains("DROP")) {
                n += line
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        n
    }

    /// TCP segments retransmitted inside the namespace (the server's side).
    pub fn retransmits(&self) -> u64 {
        self.exec(&["cat", "/proc/net/snmp"])
            .ok()
            .and_then(|t| retrans_segs(&t))
            .unwrap_or(0)
    }
}

/// `RetransSegs` from the text of `/proc/net/snmp`.
pub fn retrans_segs(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names.split_whitespace().position(|n| n == "RetransSegs")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

impl Drop for Netns {
    /// Removes the namespace (its rules and its end of the pair go with
    /// it) and the link here, and checks that neither is left.
    fn drop(&mut self) {
        if self.made_ns {
            let _ = run(&["ip", "netns", "del", &self.name]);
        }
        if self.made_link {
            // Gone with its peer already, normally.
            let _ = run(&["ip", "link", "del", &self.host_if]);
        }
        let left_ns =
            run(&["ip", "netns", "list"]).is_ok_and(|l| l.split_whitespace().any(|n| n == self.name));
        let left_link = run(&["ip", "link", "show", &self.host_if]).is_ok();
        if left_ns || left_link {
            eprintln!(
                "iocore soak: could not remove {}{}: remove by hand (ip netns del {}; ip link del {})",
                if left_ns { "the namespace " } else { "" },
                if left_link { "the link" } else { "" },
                self.name,
                self.host_if
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmits_from_proc_net_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
                    Tcp: 1 200 120000 -1 10 5 0 0 2 1000 900 37 0 3 0\n";
        assert_eq!(retrans_segs(snmp), Some(37));
        assert_eq!(retrans_segs("Ip: 1\n"), None);
    }
}
