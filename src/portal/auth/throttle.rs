//! Login throttling, in memory: after [`FREE_FAILURES`] wrong passwords for one user name (or
//! [`FREE_FAILURES_PER_PEER`] from one address, whatever the names), further attempts are refused
//! without checking the password for a lock-out that doubles with each failure (30 s, 1 min, …,
//! at most 15 min). A success clears the name's count. Entries idle for an hour are forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong passwords per user name before lock-outs start.
pub const FREE_FAILURES: u32 = 5;
/// Wrong passwords per address before lock-outs start.
pub const FREE_FAILURES_PER_PEER: u32 = 20;
const FIRST_LOCK: Duration = Duration::from_secs(30);
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// The throttle's memory.
#[derive(Debug, Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Entry>>,
}

fn keys(user: &str, peer_ip: &str) -> [(String, u32); 2] {
    [
        (format!("u:{}", user.to_lowercase()), FREE_FAILURES),
        (format!("p:{peer_ip}"), FREE_FAILURES_PER_PEER),
    ]
}

impl Throttle {
    /// A throttle that remembers nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Err(wait)` when attempts for this name or from this address are locked out now.
    pub fn check(&self, user: &str, peer_ip: &str) -> Result<(), Duration> {
        self.check_at(user, peer_ip, Instant::now())
    }

    fn check_at(&self, user: &str, peer_ip: &str, now: Instant) -> Result<(), Duration> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let wait = keys(user, peer_ip)
            .iter()
            .filter_map(|(k, _)| map.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Notes a wrong password.
    pub fn failed(&self, user: &str, peer_ip: &str) {
        self.failed_at(user, peer_ip, Instant::now());
    }

    fn failed_at(&self, user: &str, peer_ip: &str, now: Instant) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        for (key, free) in keys(user, peer_ip) {
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                locked_until: None,
                last: now,
            });
            if now.duration_since(e.last) >= FORGET_AFTER {
                e.failures = 0;
            }
            e.failures += 1;
            e.last = now;
            if e.failures >= free {
                let doublings = (e.failures - free).min(10);
                let lock = (FIRST_LOCK * 2u32.pow(doublings)).min(MAX_LOCK);
                e.locked_until = Some(now + lock);
            }
        }
    }

    /// Notes a successful login: the name starts afresh (the address keeps its count).
    pub fn succeeded(&self, user: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("u:{}", user.to_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_the_name_then_lock_outs_double() {
        let t = Throttle::new();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed_at("Alice", "10.0.0.1", t0);
            assert!(t.check_at("alice", "10.0.0.1", t0).is_ok());
        }
        t.failed_at("alice", "10.0.0.1", t0);
        let wait = t.check_at("ALICE", "10.0.0.2", t0).unwrap_err();
        assert_eq!(wait, FIRST_LOCK, "locked by name, from any address");
        assert!(
            t.check_at("bob", "10.0.0.1", t0).is_ok(),
            "other names are free"
        );
        let later = t0 + FIRST_LOCK;
        assert!(t.check_at("alice", "10.0.0.1", later).is_ok());
        t.failed_at("alice", "10.0.0.1", later);
        assert_eq!(
            t.check_at("alice", "10.0.0.1", later).unwrap_err(),
            FIRST_LOCK * 2
        );
        t.succeeded("alice");
        assert!(t.check_at("alice", "10.0.0.1", later).is_ok());
    }

    #[test]
    fn one_address_trying_many_names_is_locked() {
        let t = Throttle::new();
        let t0 = Instant::now();
        for i in 0..FREE_FAILURES_PER_PEER {
            t.failed_at(&format!("user{i}"), "10.0.0.9", t0);
        }
        assert!(t.check_at("someone", "10.0.0.9", t0).is_err());
        assert!(t.check_at("someone", "10.0.0.8", t0).is_ok());
    }
}
