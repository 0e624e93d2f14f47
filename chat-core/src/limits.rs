//! [`ConnectionLimits`]: how many connections a node holds at once, in total and per peer IP
//! address, shared by every transport of the node.
//!
//! A transport asks for a [`ConnectionPermit`] when it accepts a connection, before anything
//! else is spent on it (no task, no session); over a limit it closes the connection at once
//! (TCP) or answers `503` (WebSocket). The permit travels with the connection and gives its
//! place back when dropped. Only peers with live connections have an entry, so the
//! bookkeeping itself is bounded by `max_connections`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::engine::EngineError;

/// The default bound on a node's connections, all transports together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 25_000;
/// The default bound on one peer IP address's connections.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;

/// A node's connection limits and the count of connections holding a permit. Cheap to clone:
/// every clone is the same limiter, so giving one to both transports makes the limits
/// node-wide. Two handles compare equal when they are the same limiter.
///
/// Defaults: 25,000 connections, 1,000 per IP address. A limit of 0 is refused
/// ([`new`](Self::new) fails); a host that wants no practical limit says `usize::MAX`.
/// Addresses are compared exactly (an IPv4-mapped IPv6 address counts as its IPv4 address).
///
/// ```
/// use chat_core::ConnectionLimits;
/// use std::net::{IpAddr, Ipv4Addr};
///
/// let limits = ConnectionLimits::new(3, 2).unwrap();
/// let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// let a = limits.try_acquire(ip).expect("first");
/// let b = limits.try_acquire(ip).expect("second");
/// assert!(limits.try_acquire(ip).is_none()); // over the per-IP limit
/// assert_eq!((limits.count(), limits.count_for(ip)), (2, 2));
/// drop(a); // a closed connection gives its place back
/// assert!(limits.try_acquire(ip).is_some());
/// # drop(b);
/// assert_eq!(limits.count(), 0);
/// assert!(ConnectionLimits::new(0, 1).is_err());
/// ```
#[derive(Clone)]
pub struct ConnectionLimits {
    inner: Arc<Shared>,
}

struct Shared {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    /// Live connections per address; an address leaves the map with its last connection.
    per_ip: HashMap<IpAddr, usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for ConnectionLimits {
    /// 25,000 connections, 1,000 per IP address.
    fn default() -> Self {
        Self::build(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP)
    }
}

impl fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("max_connections", &self.inner.max_total)
            .field("max_connections_per_ip", &self.inner.max_per_ip)
            .field("count", &self.count())
            .finish()
    }
}

impl PartialEq for ConnectionLimits {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for ConnectionLimits {}

impl ConnectionLimits {
    /// A limiter admitting at most `max_connections` connections, and at most
    /// `max_connections_per_ip` from one IP address. Both must be at least 1.
    pub fn new(max_connections: usize, max_connections_per_ip: usize) -> Result<Self, EngineError> {
        if max_connections == 0 || max_connections_per_ip == 0 {
            return Err(EngineError::Config("max_connections and max_connections_per_ip must be at least 1"));
        }
        Ok(Self::build(max_connections, max_connections_per_ip))
    }

    fn build(max_total: usize, max_per_ip: usize) -> Self {
        ConnectionLimits { inner: Arc::new(Shared { max_total, max_per_ip, state: Mutex::default() }) }
    }

    /// The bound on all connections.
    pub fn max_connections(&self) -> usize {
        self.inner.max_total
    }

    /// The bound on one IP address's connections.
    pub fn max_connections_per_ip(&self) -> usize {
        self.inner.max_per_ip
    }

    /// A place for one more connection from `ip`, or `None` when that would exceed either
    /// limit. `None` for `ip` (a peer without an IP address, a Unix socket say) counts against
    /// the total only. The place is given back when the permit is dropped.
    pub fn try_acquire(&self, ip: impl Into<Option<IpAddr>>) -> Option<ConnectionPermit> {
        let ip = ip.into().map(canonical);
        let mut s = self.inner.lock();
        if s.total >= self.inner.max_total {
            return None;
        }
        if let Some(ip) = ip {
            let n = s.per_ip.entry(ip).or_insert(0);
            if *n >= self.inner.max_per_ip {
                return None; // the entry exists: it has live connections
            }
            *n += 1;
        }
        s.total += 1;
        drop(s);
        Some(ConnectionPermit { limits: self.inner.clone(), ip })
    }

    /// How many connections hold a permit now.
    pub fn count(&self) -> usize {
        self.inner.lock().total
    }

    /// How many connections from `ip` hold a permit now.
    pub fn count_for(&self, ip: IpAddr) -> usize {
        self.inner.lock().per_ip.get(&canonical(ip)).copied().unwrap_or(0)
    }

    /// How many addresses have connections now (the size of the per-address bookkeeping).
    pub fn addresses(&self) -> usize {
        self.inner.lock().per_ip.len()
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) as its IPv4
/// address, so that one peer is counted once however it is seen.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One connection's place within [`ConnectionLimits`]; given back on drop. Held for as long
/// as the connection lives (its task, through the WebSocket upgrade into the session).
pub struct ConnectionPermit {
    limits: Arc<Shared>,
    ip: Option<IpAddr>,
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit").field("ip", &self.ip).finish()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut s = self.limits.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = s.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    s.per_ip.remove(&ip);
                    // After a burst from many addresses, give the table's memory back.
                    let (len, capacity) = (s.per_ip.len(), s.per_ip.capacity());
                    if capacity > 64 && len < capacity / 4 {
                        s.per_ip.shrink_to(len * 2);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn total_limit_at_its_boundary() {
        let limits = ConnectionLimits::new(4, 100).unwrap();
        let permits: Vec<_> = (0..4).map(|i| limits.try_acquire(v4(i)).expect("within the limit")).collect();
        assert_eq!(limits.count(), 4);
        assert!(limits.try_acquire(v4(9)).is_none(), "one over the total is refused");
        assert!(limits.try_acquire(None).is_none(), "an address-less peer counts against the total");
        assert_eq!(limits.count_for(v4(9)), 0, "a refused address leaves no entry");
        assert_eq!(limits.addresses(), 4);
        drop(permits);
        assert_eq!((limits.count(), limits.addresses()), (0, 0));
    }

    #[test]
    fn per_ip_limit_at_its_boundary() {
        let limits = ConnectionLimits::new(100, 3).unwrap();
        let mine: Vec<_> = (0..3).map(|_| limits.try_acquire(v4(1)).expect("within the limit")).collect();
        assert!(limits.try_acquire(v4(1)).is_none(), "one over the per-IP limit is refused");
        let other = limits.try_acquire(v4(2)).expect("another address is not affected");
        assert_eq!((limits.count(), limits.count_for(v4(1)), limits.count_for(v4(2))), (4, 3, 1));
        drop(other);
        assert_eq!(limits.addresses(), 1, "an address leaves with its last connection");
        drop(mine);
        assert!(limits.try_acquire(v4(1)).is_some());
    }

    #[test]
    fn mapped_ipv6_counts_as_its_ipv4_address() {
        let limits = ConnectionLimits::new(10, 1).unwrap();
        let _a = limits.try_acquire(v4(7)).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert!(limits.try_acquire(mapped).is_none());
        assert!(limits.try_acquire(IpAddr::V6(Ipv6Addr::LOCALHOST)).is_some());
    }

    #[test]
    fn clones_share_one_count_and_defaults_are_documented() {
        let limits = ConnectionLimits::default();
        assert_eq!((limits.max_connections(), limits.max_connections_per_ip()), (25_000, 1_000));
        let clone = limits.clone();
        let _p = clone.try_acquire(v4(1)).unwrap();
        assert_eq!(limits.count(), 1);
        assert_eq!(limits, clone);
        assert_ne!(limits, ConnectionLimits::default());
        assert!(ConnectionLimits::new(1, 0).is_err());
    }

    #[test]
    fn the_table_is_bounded_by_live_connections() {
        let limits = ConnectionLimits::new(100_000, 1).unwrap();
        for round in 0..3u8 {
            let permits: Vec<_> = (0..=255)
                .flat_map(|a| (0..40).map(move |b| IpAddr::V4(Ipv4Addr::new(round, a, b, 1))))
                .map(|ip| limits.try_acquire(ip).unwrap())
                .collect();
            assert_eq!(limits.addresses(), permits.len());
        }
        assert_eq!((limits.count(), limits.addresses()), (0, 0));
        assert!(limits.inner.lock().per_ip.capacity() <= 64, "memory given back after the burst");
    }

    #[test]
    fn concurrent_acquire_never_exceeds_the_limit() {
        let limits = ConnectionLimits::new(50, 50).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limits = limits.clone();
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        if let Some(p) = limits.try_acquire(v4(1)) {
                            assert!(limits.count() <= 50);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(limits.count(), 0);
    }
}
