//! Behind a reverse proxy (`serve --trusted-proxy CIDR...`): the client's address, and the
//! scheme and host it used, are read from `X-Forwarded-For`, `-Proto` and `-Host` only when the
//! connection comes from a trusted proxy. From anyone else those headers are the client's own
//! say-so and ignored: else any client could choose its rate-limit allowance, its line in the
//! access log, or the host in the links it is sent.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    /// Whether connections from `ip` come through a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer's, or, from a trusted proxy, the last `X-Forwarded-For`
    /// entry that is not a trusted proxy itself (entries further left are the client's to
    /// write, and believed by no one).
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let chain: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for entry in chain.iter().rev() {
            match entry.parse::<IpAddr>() {
                Ok(ip) if self.trusts(ip) => continue,
                Ok(ip) => return Some(ip),
                // A proxy wrote something that is no address: nothing before it can be trusted.
                Err(_) => return Some(peer),
            }
        }
        Some(peer)
    }

    /// The scheme and host the client asked for: from a trusted proxy's `X-Forwarded-Proto`
    /// and `X-Forwarded-Host` where it sent them, else this connection's own (`http`, `Host`).
    pub fn origin(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> (String, String) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').next().unwrap_or_default().trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let trusted = peer.is_some_and(|p| self.trusts(p));
        let scheme = trusted
            .then(|| header("x-forwarded-proto"))
            .flatten()
            .filter(|s| s == "http" || s == "https")
            .unwrap_or_else(|| "http".to_owned());
        let host = trusted
            .then(|| header("x-forwarded-host"))
            .flatten()
            .or_else(|| header("host"))
            .filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)))
            .unwrap_or_else(|| "localhost".to_owned());
        (scheme, host)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4, 198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "ci.example.org"),
            ("host", "10.0.0.5:8080"),
        ]);
        // Through two of ours: the first address not ours; the client's own claim (1.2.3.4) is not it.
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("198.51.100.7"));
        assert_eq!(proxies.origin(ip("10.0.0.2"), &h), ("https".to_owned(), "ci.example.org".to_owned()));
        // From anyone else, the headers are ignored.
        assert_eq!(proxies.client(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        assert_eq!(proxies.origin(ip("203.0.113.9"), &h), ("http".to_owned(), "10.0.0.5:8080".to_owned()));
        // Garbage from a trusted proxy: the proxy is the client as far as anyone knows.
        let bad = headers(&[("x-forwarded-for", "1.2.3.4, not-an-address")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &bad), ip("10.0.0.2"));
        // No proxies configured: the peer, always.
        assert_eq!(TrustedProxies::default().client(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }
}
