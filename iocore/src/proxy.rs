//! The PROXY protocol (v1 text, v2 binary): the header a load balancer
//! such as HAProxy (`send-proxy`, `send-proxy-v2`) puts at the start of
//! each connection to say whom it speaks for.
//!
//! A server started with `ServerBuilder::proxy_protocol` (cargo feature
//! `proxy-protocol`) reads the header before anything else:
//!
//! - Only connections from a trusted proxy (`ProxyProtocol::trusted`,
//!   loopback by default) may send one; any other connection is closed at
//!   once with [`crate::CloseReason::ProxyUntrusted`].
//! - A connection whose first bytes are not a valid v1 or v2 header is
//!   closed with [`crate::CloseReason::ProxyInvalid`]; one that sends no
//!   whole header within `ProxyProtocol::header_timeout` with
//!   [`crate::CloseReason::ProxyTimeout`]. Neither reaches
//!   `Handler::on_connected` (the handler hears `on_disconnected`, as for
//!   a failed connect); each is counted by its close kind.
//! - With a header, the session opens: [`crate::Session::peer_addr`] is
//!   the client's address, [`crate::Session::proxy_addr`] the proxy's, and
//!   [`crate::Session::proxy`] tells the rest ([`ProxyInfo`]). The limit
//!   per client address (`max_sessions_per_ip`) applies to the client's
//!   address, checked then.
//! - A LOCAL header (v2; HAProxy's health checks with `send-proxy-v2`)
//!   opens a session with the connection's own addresses; the checker's
//!   close ends it like any other.
//!
//! The parsing is the [`proxy-header`](https://crates.io/crates/proxy-header)
//! crate's: it parses from a byte slice, tells "need more bytes" from
//! "invalid", returns the length consumed, reads v2 TLVs, and has no
//! dependencies (`ppp`, the better-known parser, offers the same in a
//! larger API). Trusted networks are written as CIDR blocks, parsed by the
//! `ipnet` crate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[cfg(feature = "proxy-protocol")]
pub use ipnet::IpNet;

/// A server's PROXY protocol settings (feature `proxy-protocol`).
#[cfg(feature = "proxy-protocol")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// The networks proxies may connect from. Default: loopback
    /// (`127.0.0.0/8`, `::1/128`).
    pub trusted: Vec<IpNet>,
    /// How long a connection may take to send its whole header. Default
    /// 5 s.
    pub header_timeout: Duration,
}

#[cfg(feature = "proxy-protocol")]
impl Default for ProxyProtocol {
    fn default() -> ProxyProtocol {
        ProxyProtocol {
            trusted: vec![
                "127.0.0.0/8".parse().expect("a CIDR block"),
                "::1/128".parse().expect("a CIDR block"),
            ],
            header_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(feature = "proxy-protocol")]
impl ProxyProtocol {
    /// Trusts proxies in `trusted` (CIDR blocks, or single addresses),
    /// with the default header timeout.
    pub fn trusting(trusted: impl IntoIterator<Item = IpNet>) -> ProxyProtocol {
        ProxyProtocol {
            trusted: trusted.into_iter().collect(),
            ..ProxyProtocol::default()
        }
    }

    /// Parses a comma-separated list of CIDR blocks or addresses
    /// (`10.0.0.0/8,192.168.1.7,::1`).
    pub fn parse_trusted(list: &str) -> Result<Vec<IpNet>, crate::ConfigError> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        crate::ConfigError::new(
                            crate::Setting::TrustedProxies,
                            format!("'{s}' is neither a CIDR block (10.0.0.0/8) nor an address"),
                        )
                    })
            })
            .collect()
    }

    pub(crate) fn settings(&self) -> ProxySettings {
        ProxySettings {
            trusted: self
                .trusted
                .iter()
                .map(|n| (n.network(), n.prefix_len()))
                .collect(),
            header_timeout: self.header_timeout,
        }
    }
}

/// The PROXY protocol settings as the workers use them.
#[derive(Clone, Debug)]
pub(crate) struct ProxySettings {
    /// Trusted networks: address and prefix length.
    pub trusted: Vec<(IpAddr, u8)>,
    pub header_timeout: Duration,
}

impl ProxySettings {
    /// Whether a connection from `ip` may send a header. An IPv4 peer seen
    /// through an IPv6 socket counts as itself.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_matches(&n.octets(), &a.octets(), len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_matches(&n.octets(), &a.octets(), len),
            _ => false,
        })
    }
}

/// Whether the first `len` bits of `a` and `b` agree.
fn prefix_matches(a: &[u8], b: &[u8], len: u8) -> bool {
    let (whole, bits) = ((len / 8) as usize, len % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    bits == 0 || (a[whole] ^ b[whole]) >> (8 - bits) == 0
}

/// Most bytes a PROXY header may take here. A v1 header is at most 107; a
/// v2 header is 16 plus its addresses and TLVs, which a load balancer
/// keeps far below this. A connection whose first bytes reach this length
/// without a whole header is closed.
pub const MAX_HEADER: usize = 4096;

/// What a session's PROXY header said.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyInfo {
    /// The proxy: the connection's own peer address.
    pub proxy: SocketAddr,
    /// The address the client connected to, on the proxy (`None` for a
    /// LOCAL header).
    pub destination: Option<SocketAddr>,
    /// A LOCAL header (v2): the proxy speaks for itself, as in a health
    /// check; the session keeps the connection's own addresses.
    pub local: bool,
    /// Which version of the protocol the header was (1 or 2).
    pub version: u8,
    /// The v2 header's TLVs, as (type, value), in order (empty for v1).
    pub tlvs: Vec<(u8, Box<[u8]>)>,
}

/// What the bytes at the start of a connection are.
#[cfg(feature = "proxy-protocol")]
#[derive(Debug)]
pub(crate) enum Parsed {
    /// The start of a header: more bytes are needed.
    More,
    /// Not a valid header; the text says why.
    Invalid(String),
    /// A whole header of `len` bytes, speaking for `source` (`None`: a
    /// LOCAL header).
    Header {
        info: ProxyInfo,
        source: Option<SocketAddr>,
        len: usize,
    },
}

/// Parses the PROXY header at the start of `buf`, read from a connection
/// whose peer is `proxy`.
#[cfg(feature = "proxy-protocol")]
pub(crate) fn parse(buf: &[u8], proxy: SocketAddr) -> Parsed {
    use proxy_header::{Error, ParseConfig, Protocol, ProxyHeader};
    let config = ParseConfig {
        include_tlvs: true,
        allow_v1: true,
        allow_v2: true,
    };
    let (header, len) = match ProxyHeader::parse(buf, config) {
        Ok(parsed) => parsed,
        Err(Error::BufferTooShort) if buf.len() < MAX_HEADER => return Parsed::More,
        Err(Error::BufferTooShort) => {
            return Parsed::Invalid(format!("no whole header in the first {MAX_HEADER} bytes"))
        }
        Err(e) => return Parsed::Invalid(e.to_string()),
    };
    if len > MAX_HEADER {
        return Parsed::Invalid(format!("header of {len} bytes, over {MAX_HEADER}"));
    }
    let version = if buf.starts_with(b"PROXY") { 1 } else { 2 };
    let mut tlvs = Vec::new();
    for tlv in header.tlvs() {
        let Ok(tlv) = tlv else {
            return Parsed::Invalid("malformed TLV".into());
        };
        // The TLV as sent (type, u16 length, value): its value is the rest.
        let mut raw = Vec::new();
        tlv.encode(&mut raw);
        tlvs.push((tlv.kind(), raw.get(3..).unwrap_or_default().into()));
    }
    let (source, destination) = match header.proxied_address() {
        Some(a) if a.protocol != Protocol::Stream => {
            return Parsed::Invalid("a datagram (UDP) header on a TCP connection".into());
        }
        Some(a) => (Some(a.source), Some(a.destination)),
        None => (None, None),
    };
    let info = ProxyInfo {
        proxy,
        destination,
        local: source.is_none(),
        version,
        tlvs,
    };
    Parsed::Header { info, source, len }
}

#[cfg(all(test, feature = "proxy-protocol"))]
mod tests {
    use super::*;

    #[test]
    fn trusted_networks() {
        let p = ProxyProtocol::trusting(
            ProxyProtocol::parse_trusted("10.0.0.0/8, 192.168.1.7,fd00::/8").unwrap(),
        );
        let s = p.settings();
        for ok in ["10.1.2.3", "192.168.1.7", "fd12::1", "::ffff:10.9.9.9"] {
            assert!(s.trusts(ok.parse().unwrap()), "{ok}");
        }
        for no in ["11.0.0.1", "192.168.1.8", "fe80::1", "127.0.0.1"] {
            assert!(!s.trusts(no.parse().unwrap()), "{no}");
        }
        let loopback = ProxyProtocol::default().settings();
        assert!(loopback.trusts("127.0.0.3".parse().unwrap()));
        assert!(loopback.trusts("::1".parse().unwrap()));
        assert!(ProxyProtocol::parse_trusted("10.0.0.0/33").is_err());
        assert!(ProxyProtocol::parse_trusted("proxy.example").is_err());
    }

    fn proxy() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    #[test]
    fn v1_header_and_the_bytes_after_it() {
        let buf = b"PROXY TCP4 10.1.2.3 10.0.0.1 51000 7777\r\nhello";
        for cut in 1..buf.len() - 5 {
            assert!(
                matches!(parse(&buf[..cut], proxy()), Parsed::More),
                "cut at {cut}"
            );
        }
        let Parsed::Header { info, source, len } = parse(buf, proxy()) else {
            panic!()
        };
        assert_eq!(source, Some("10.1.2.3:51000".parse().unwrap()));
        assert_eq!(info.destination, Some("10.0.0.1:7777".parse().unwrap()));
        assert_eq!((info.version, info.local, info.proxy), (1, false, proxy()));
        assert_eq!(&buf[len..], b"hello");
    }

    #[test]
    fn v2_local_and_tlvs() {
        let mut local = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let Parsed::Header { info, source, len } = parse(&local, proxy()) else {
            panic!()
        };
        assert_eq!((source, info.local, info.version, len), (None, true, 2, 16));

        // PROXY TCP4 with one custom TLV (type 0xE0, "abc").
        let mut v2 = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0x00, 12 + 6]);
        v2.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2, 0xC3, 0x50, 0x01, 0xBB]);
        v2.extend_from_slice(&[0xE0, 0x00, 0x03, b'a', b'b', b'c']);
        let Parsed::Header { info, source, len } = parse(&v2, proxy()) else {
            panic!()
        };
        assert_eq!(source, Some("192.0.2.1:50000".parse().unwrap()));
        assert_eq!(len, v2.len());
        assert_eq!(info.tlvs, vec![(0xE0, b"abc".to_vec().into_boxed_slice())]);
    }

    #[test]
    fn garbage_and_endless_headers_are_invalid() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n", proxy()),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense 10.0.0.1 1 2\r\n", proxy()),
            Parsed::Invalid(_)
        ));
        // A v1 line that ends early is only known bad at 107 bytes (the
        // longest v1 header) or at the header timeout.
        assert!(matches!(parse(b"PROXY TCP4 x\r\n", proxy()), Parsed::More));
        let mut long = b"PROXY TCP4 x\r\n".to_vec();
        long.resize(107, b'y');
        assert!(matches!(parse(&long, proxy()), Parsed::Invalid(_)));
        let endless = vec![b' '; MAX_HEADER + 1];
        let mut v1 = b"PROXY TCP4 ".to_vec();
        v1.extend_from_slice(&endless);
        assert!(matches!(parse(&v1, proxy()), Parsed::Invalid(_)));
    }
}
