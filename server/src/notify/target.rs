//! Where the server may send a webhook: the public internet, not itself, its network or its
//! cloud's metadata service.
//!
//! Whoever subscribes a webhook chooses a URL the server POSTs to, and `notify log` shows the
//! answer: without a check, `http://169.254.169.254/…`, `http://127.0.0.1:5432/` or
//! `http://2130706433/` (127.0.0.1, spelt as a number) would let them probe the server's
//! network from inside. A target is checked after DNS resolution, when it is added and again at
//! each delivery, on the very addresses the connection then uses (a name that resolved to a
//! public address on Monday may point inside on Tuesday). An operator who does want an inside
//! receiver says so per subscription (`notify add --allow-private-target`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};

/// Host names that lead to a cloud's metadata service whatever they resolve to here.
const METADATA_NAMES: &[&str] = &["metadata.google.internal", "metadata", "instance-data", "metadata.azure.com"];

/// Why `ip` is no place for a webhook, if it is not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address written in IPv6 (mapped, or NAT64) is judged as IPv4.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return forbidden_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private (unique local)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata services live there)")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (carrier-grade NAT)")
    } else if a == 0 || ip.is_unspecified() {
        Some("this network")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("IETF protocol assignments")
    } else {
        None
    }
}

/// Checks a webhook URL's host (resolving it) when it is added: Err says which address and why.
/// A name that does not resolve here now passes with a note (Ok(Some)): every delivery checks
/// it again anyway.
pub fn check_url(url: &str) -> Result<Option<String>, String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    if METADATA_NAMES.contains(&host.trim_end_matches('.')) {
        return Err(format!("{host} is a cloud metadata service"));
    }
    match (host.as_str(), port).to_socket_addrs() {
        Ok(addrs) => check_addrs(&host, &addrs.collect::<Vec<_>>()).map(|()| None),
        Err(e) => Ok(Some(format!(
            "{host} cannot be resolved here now ({e}); each delivery checks where it leads before connecting"
        ))),
    }
}

fn check_addrs(host: &str, addrs: &[SocketAddr]) -> Result<(), String> {
    match addrs.iter().find_map(|a| forbidden(a.ip()).map(|why| (a.ip(), why))) {
        Some((ip, why)) => Err(format!("{host} resolves to {ip}, a {why} address")),
        None => Ok(()),
    }
}

/// A resolver for webhook deliveries that refuses a name resolving to a forbidden address, so
/// that the connection is made only to addresses that passed the check.
#[derive(Debug, Default)]
pub struct PublicOnly(DefaultResolver);

impl Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let refused = |why: String| {
            ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "refused: {why}; this server sends webhooks to public addresses only (`notify add --allow-private-target` for an inside receiver)"
                ),
            ))
        };
        if METADATA_NAMES.contains(&host.trim_end_matches('.')) {
            return Err(refused(format!("{host} is a cloud metadata service")));
        }
        let addrs = self.0.resolve(uri, config, timeout)?;
        check_addrs(&host, &addrs).map_err(refused)?;
        Ok(addrs)
    }
}

/// An agent that connects only to public addresses.
pub fn public_agent(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(config, ureq::unversioned::transport::DefaultConnector::default(), PublicOnly::default())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn inside_addresses_are_refused_public_ones_not() {
        for inside in [
            "127.0.0.1",
            "127.8.9.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            let ip: IpAddr = inside.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            assert!(forbidden(ip).is_some(), "{inside}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111", "100.128.0.1"] {
            let ip: IpAddr = public.parse().unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
            assert_eq!(forbidden(ip), None, "{public}");
        }
    }

    #[test]
    fn urls_are_judged_by_what_they_resolve_to() {
        let note = check_url("http://no-such-host.invalid/h");
        assert!(
            note.as_ref().is_ok_and(|n| n.as_ref().is_some_and(|n| n.contains("cannot be resolved here now"))),
            "{note:?}"
        );
        for url in [
            "http://127.0.0.1:5432/",
            "http://[::1]:22/x",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://localhost:8080/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/computeMetadata/v1/",
        ] {
            assert!(check_url(url).is_err(), "{url} was allowed");
        }
        assert!(check_url("http://127.0.0.1:5432/").is_err_and(|e| e.contains("127.0.0.1, a loopback address")));
    }
}
