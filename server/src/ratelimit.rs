//! Rate limits for anonymous requests that create something: self-registrations.
//!
//! A registration costs nothing to send and leaves a row behind (one client once made 71,638
//! pending builders a minute), so each client address, and all of them together, get a token
//! bucket: a burst, then a steady number per hour. Clients are counted per network: an IPv4
//! /24 and an IPv6 /64, the blocks one subscriber or one rented machine usually has at hand (a
//! red team made 30 pending registrations a minute from 40 addresses of one /24).
//!
//! The buckets live in this process: with several server processes each keeps its own, which
//! multiplies the allowance by the number of processes but still bounds it. The pending-builder
//! cap per project (in `api/builders.rs`) is the bound that holds across processes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A burst of `burst`, refilled at `per_hour`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: f64,
    pub per_hour: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token if there is one; otherwise the seconds until there will be.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), u64> {
        let per_sec = rate.per_hour / 3600.0;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * per_sec).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if per_sec > 0.0 {
            Err(((1.0 - self.tokens) / per_sec).ceil() as u64)
        } else {
            Err(3600)
        }
    }
}

/// Per-address and total limits.
#[derive(Debug)]
pub struct Limiter {
    per_address: Rate,
    total: Rate,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    total: Bucket,
    per_addr: HashMap<IpAddr, Bucket>,
    /// When full buckets were last forgotten.
    pruned: Option<Instant>,
}

/// Which limit was hit, and when to try again (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Address(u64),
    Total(u64),
}

/// Addresses remembered at most; past this, buckets that have filled up again are forgotten
/// (they would allow the next request anyway), so memory stays bounded under a flood.
const MAX_TRACKED: usize = 100_000;

impl Limiter {
    pub fn new(per_address: Rate, total: Rate) -> Limiter {
        let full = Bucket { tokens: total.burst, at: Instant::now() };
        Limiter { per_address, total, state: Mutex::new(State { total: full, per_addr: HashMap::new(), pruned: None }) }
    }

    /// Counts one request from `addr` against its address's bucket, or says when to come
    /// back. Cheap, and done before anything else about the request.
    pub fn check_address(&self, addr: IpAddr, now: Instant) -> Result<(), Refused> {
        let mut guard = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = &mut *guard;
        let key = client_block(addr);
        if !state.per_addr.contains_key(&key) && state.per_addr.len() >= MAX_TRACKED {
            // Forget the buckets that have filled up again (they would allow the next request
            // anyway), at most once a minute; if the table is still full, this address waits.
            if state.pruned.is_none_or(|t| now.duration_since(t).as_secs() >= 60) {
                let (burst, per_sec) = (self.per_address.burst, self.per_address.per_hour / 3600.0);
                state.per_addr.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
                state.pruned = Some(now);
            }
            if state.per_addr.len() >= MAX_TRACKED {
                return Err(Refused::Total(60));
            }
        }
        let bucket = state.per_addr.entry(key).or_insert(Bucket { tokens: self.per_address.burst, at: now });
        bucket.take(self.per_address, now).map_err(Refused::Address)
    }

    /// Counts one request against everyone's bucket: only for requests that proved something
    /// (a valid signature), so junk from many addresses cannot use up the shared allowance.
    pub fn check_total(&self, now: Instant) -> Result<(), Refused> {
        let mut guard = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.total.take(self.total, now).map_err(Refused::Total)
    }

    /// Both checks, as one request from `addr`.
    pub fn check(&self, addr: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        if let Some(addr) = addr {
            self.check_address(addr, now)?;
        }
        self.check_total(now)
    }
}

/// The address block one client is counted as: its /24 for IPv4, its /64 for IPv6.
fn client_block(addr: IpAddr) -> IpAddr {
    let v4 = |v4: std::net::Ipv4Addr| {
        let [a, b, c, _] = v4.octets();
        IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 0))
    };
    match addr {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(a) => v4(a),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The network a client is counted in, written as people write it: `203.0.113.0/24`,
/// `2001:db8:1:2::/64`.
pub fn network(addr: IpAddr) -> String {
    match client_block(addr) {
        IpAddr::V4(a) => format!("{a}/24"),
        IpAddr::V6(a) => format!("{a}/64"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2)));

    #[test]
    fn a_burst_then_the_hourly_rate() {
        let l = Limiter::new(Rate { burst: 3.0, per_hour: 60.0 }, Rate { burst: 100.0, per_hour: 1000.0 });
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(A, t), Ok(()));
        }
        assert_eq!(l.check(A, t), Err(Refused::Address(60)));
        // Another client is not held up by the first one.
        assert_eq!(l.check(B, t), Ok(()));
        // One a minute comes back.
        assert_eq!(l.check(A, t + Duration::from_secs(61)), Ok(()));
        assert!(l.check(A, t + Duration::from_secs(62)).is_err());
    }

    #[test]
    fn the_total_binds_many_addresses() {
        let l = Limiter::new(Rate { burst: 5.0, per_hour: 5.0 }, Rate { burst: 4.0, per_hour: 3600.0 });
        let t = Instant::now();
        let addr = |i: u8| Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, i, 1)));
        for i in 0..4 {
            assert_eq!(l.check(addr(i), t), Ok(()));
        }
        assert_eq!(l.check(addr(9), t), Err(Refused::Total(1)));
        // The total refills at one a second here.
        assert_eq!(l.check(addr(9), t + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn ipv4_counts_per_24() {
        let l = Limiter::new(Rate { burst: 2.0, per_hour: 1.0 }, Rate { burst: 100.0, per_hour: 100.0 });
        let t = Instant::now();
        let addr = |c: u8, d: u8| Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, c, d)));
        assert_eq!(l.check(addr(0, 1), t), Ok(()));
        assert_eq!(l.check(addr(0, 2), t), Ok(()));
        assert!(l.check(addr(0, 40), t).is_err(), "the same /24");
        assert_eq!(l.check(addr(1, 1), t), Ok(()), "another /24");
        assert_eq!(network(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 77))), "203.0.113.0/24");
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = Limiter::new(Rate { burst: 1.0, per_hour: 1.0 }, Rate { burst: 100.0, per_hour: 100.0 });
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(l.check(Some(a), t), Ok(()));
        assert!(l.check(Some(b), t).is_err());
    }
}
