//! Failed-login throttling (PROTOCOL.md): after 10 failures for one username
//! from one client address within 5 minutes, or 50 from one address, every
//! attempt from there is refused with 429 until the window passes. Other
//! addresses are never affected, so nobody can lock a user out remotely.
//! An IPv6 client is counted by its /64: one host is given a whole one.
//!
//! An attempt counts against the limits from the moment it starts, so a
//! burst of parallel guesses cannot slip past them; it becomes a failure
//! when it fails (or is dropped half way) and is forgotten when it succeeds.
//! An attempt that finds the limit reached only by attempts still in flight
//! waits for them (at most [`MAX_WAIT`]) instead of being refused, so that
//! parallel correct sign-ins never refuse each other.
//!
//! Memory stays bounded: a username is kept as its SHA-256 (a 1 KiB name
//! costs 32 bytes), counters with nothing in them are dropped at once, and
//! expired windows are swept out as the maps grow and in the background.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

pub const WINDOW_SECS: i64 = 300;
pub const PER_USER_LIMIT: usize = 10;
pub const PER_ADDRESS_LIMIT: usize = 50;
/// The longest an attempt waits for attempts in flight to finish.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// Past this many tracked keys (and past twice what the last sweep left),
/// expired windows are swept out.
const SWEEP_AT: usize = 10_000;

/// The address a client is counted by: IPv4 as is, IPv6 by its /64 (an
/// IPv4-mapped IPv6 address is its IPv4 address).
pub fn counted_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A username (hashed: fixed size whatever its length) at an address.
type UserKey = ([u8; 32], IpAddr);

#[derive(Debug, Default)]
struct Counter {
    /// Start times of failed attempts within the window, oldest first.
    failures: VecDeque<i64>,
    /// Attempts started and not finished.
    in_flight: usize,
}

impl Counter {
    fn expire(&mut self, now: i64) {
        while self
            .failures
            .front()
            .is_some_and(|&t| t + WINDOW_SECS <= now)
        {
            self.failures.pop_front();
        }
    }

    fn is_idle(&self) -> bool {
        self.failures.is_empty() && self.in_flight == 0
    }

    /// What an attempt finds at this counter.
    fn check(&mut self, limit: usize, now: i64) -> Option<Blocked> {
        self.expire(now);
        let failed = self.failures.len();
        if failed >= limit {
            // The oldest failure that keeps the count at the limit.
            let oldest_blocking = self.failures[failed - limit];
            return Some(Blocked::For(
                (oldest_blocking + WINDOW_SECS - now).max(1) as u64
            ));
        }
        (failed + self.in_flight >= limit).then_some(Blocked::InFlight)
    }

    fn record_failure(&mut self, at: i64) {
        let pos = self.failures.partition_point(|&t| t <= at);
        self.failures.insert(pos, at);
    }
}

/// Why an attempt cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The limit is reached by failures: refuse, and say in how many seconds
    /// to try again.
    For(u64),
    /// The limit is reached only with attempts still in flight: wait.
    InFlight,
}

#[derive(Default)]
struct State {
    per_user: HashMap<UserKey, Counter>,
    per_address: HashMap<IpAddr, Counter>,
    sweep_at: usize,
}

impl State {
    fn sweep(&mut self, now: i64) {
        sweep_map(&mut self.per_user, now);
        sweep_map(&mut self.per_address, now);
        self.sweep_at = SWEEP_AT.max(2 * (self.per_user.len() + self.per_address.len()));
    }
}

/// Drops the counters whose windows have passed, and the room they took.
fn sweep_map<K: Eq + std::hash::Hash>(map: &mut HashMap<K, Counter>, now: i64) {
    map.retain(|_, c| {
        c.expire(now);
        !c.is_idle()
    });
    if map.capacity() > 4 * map.len().max(64) {
        map.shrink_to_fit();
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken whenever an attempt finishes.
    finished: Notify,
}

#[derive(Default)]
pub struct Throttle {
    shared: Arc<Shared>,
}

/// An attempt in progress. [`Attempt::succeeded`] forgives it,
/// [`Attempt::abandon`] takes it back (no password was checked); dropped
/// otherwise, it is a failure.
pub struct Attempt {
    shared: Arc<Shared>,
    user: UserKey,
    at: i64,
    outcome: Outcome,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("address", &self.user.1)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Failed,
    Succeeded,
    Abandoned,
}

impl Attempt {
    /// The attempt signed in: it was no failure, and the user's earlier
    /// failures from this address are forgiven.
    pub fn succeeded(self) {
        self.finish(Outcome::Succeeded);
    }

    /// The attempt ended before any password was checked (the server was
    /// busy): it is neither a failure nor a success.
    pub fn abandon(self) {
        self.finish(Outcome::Abandoned);
    }

    fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        finish(&self.shared, self.user, self.at, self.outcome);
    }
}

fn finish(shared: &Shared, user: UserKey, at: i64, outcome: Outcome) {
    {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = st.per_user.get_mut(&user) {
            c.in_flight = c.in_flight.saturating_sub(1);
            match outcome {
                Outcome::Failed => c.record_failure(at),
                Outcome::Succeeded => c.failures.clear(),
                Outcome::Abandoned => {}
            }
            if c.is_idle() {
                st.per_user.remove(&user);
            }
        }
        if let Some(c) = st.per_address.get_mut(&user.1) {
            c.in_flight = c.in_flight.saturating_sub(1);
            if let Outcome::Failed = outcome {
                c.record_failure(at);
            }
            if c.is_idle() {
                st.per_address.remove(&user.1);
            }
        }
    }
    shared.finished.notify_waiters();
}

fn user_key(username: &str, ip: IpAddr) -> UserKey {
    (
        Sha256::digest(username.as_bytes()).into(),
        counted_address(ip),
    )
}

impl Throttle {
    /// Starts an attempt, waiting (at most [`MAX_WAIT`]) while the limits
    /// are reached only by attempts in flight; or says how many seconds to
    /// wait.
    pub async fn begin(&self, username: &str, ip: IpAddr) -> Result<Attempt, u64> {
        let key = user_key(username, ip);
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            // Registered before looking, so no finish in between is missed.
            let notified = self.shared.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.start(key, crate::clock::now()) {
                Ok(attempt) => return Ok(attempt),
                Err(Blocked::For(secs)) => return Err(secs),
                Err(Blocked::InFlight) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(1);
                    }
                }
            }
        }
    }

    /// Starts an attempt at `now` without waiting.
    pub fn try_begin(&self, username: &str, ip: IpAddr, now: i64) -> Result<Attempt, Blocked> {
        self.start(user_key(username, ip), now)
    }

    fn start(&self, key: UserKey, now: i64) -> Result<Attempt, Blocked> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.per_user.len() + st.per_address.len() > st.sweep_at.max(SWEEP_AT) {
            st.sweep(now);
        }
        let user = st
            .per_user
            .get_mut(&key)
            .and_then(|c| c.check(PER_USER_LIMIT, now));
        let addr = st
            .per_address
            .get_mut(&key.1)
            .and_then(|c| c.check(PER_ADDRESS_LIMIT, now));
        match (user, addr) {
            (Some(Blocked::For(a)), Some(Blocked::For(b))) => return Err(Blocked::For(a.max(b))),
            (Some(Blocked::For(a)), _) | (_, Some(Blocked::For(a))) => {
                return Err(Blocked::For(a));
            }
            (Some(Blocked::InFlight), _) | (_, Some(Blocked::InFlight)) => {
                return Err(Blocked::InFlight);
            }
            (None, None) => {}
        }
        let c = st.per_user.entry(key).or_default();
        c.expire(now);
        c.in_flight += 1;
        let c = st.per_address.entry(key.1).or_default();
        c.expire(now);
        c.in_flight += 1;
        Ok(Attempt {
            shared: self.shared.clone(),
            user: key,
            at: now,
            outcome: Outcome::Failed,
        })
    }

    /// Drops windows that have passed (background upkeep).
    pub fn prune(&self, now: i64) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sweep(now);
    }

    /// Keys tracked and a rough count of the bytes they hold.
    pub fn footprint(&self) -> (usize, usize) {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let entry = |key: usize| key + std::mem::size_of::<Counter>() + 1;
        let bytes = st.per_user.capacity() * entry(std::mem::size_of::<UserKey>())
            + st.per_address.capacity() * entry(std::mem::size_of::<IpAddr>())
            + st.per_user
                .values()
                .chain(st.per_address.values())
                .map(|c| c.failures.capacity() * 8)
                .sum::<usize>();
        (st.per_user.len() + st.per_address.len(), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    /// A failed attempt at `now`.
    fn fail(t: &Throttle, user: &str, ip: IpAddr, now: i64) {
        drop(t.try_begin(user, ip, now).unwrap());
    }

    #[test]
    fn ten_failures_block_that_user_from_that_address_only() {
        let t = Throttle::default();
        for i in 0..10 {
            fail(&t, "alice", IP, 1000 + i);
        }
        assert_eq!(
            t.try_begin("alice", IP, 1010).unwrap_err(),
            Blocked::For(290)
        );
        assert!(t.try_begin("alice", OTHER, 1010).is_ok());
        assert!(t.try_begin("bob", IP, 1010).is_ok());
        // the window passes
        assert!(t.try_begin("alice", IP, 1300).is_ok());
    }

    #[test]
    fn fifty_failures_block_the_address() {
        let t = Throttle::default();
        for i in 0..50 {
            fail(&t, &format!("user{i}"), IP, 1000);
        }
        assert!(matches!(
            t.try_begin("someone", IP, 1001),
            Err(Blocked::For(_))
        ));
        assert!(t.try_begin("someone", OTHER, 1001).is_ok());
    }

    #[test]
    fn success_is_not_a_failure() {
        let t = Throttle::default();
        for i in 0..30 {
            t.try_begin("alice", IP, 1000 + i).unwrap().succeeded();
        }
        assert!(t.try_begin("alice", IP, 1040).is_ok());
    }

    #[test]
    fn attempts_in_flight_count_but_ask_to_wait_not_to_go_away() {
        let t = Throttle::default();
        let in_flight: Vec<Attempt> = (0..10)
            .map(|_| t.try_begin("alice", IP, 1000).unwrap())
            .collect();
        // The eleventh parallel attempt may not start yet...
        assert_eq!(
            t.try_begin("alice", IP, 1000).unwrap_err(),
            Blocked::InFlight
        );
        // ...once one succeeds it may; had they all failed, it is refused.
        let mut in_flight = in_flight.into_iter();
        in_flight.next().unwrap().succeeded();
        let eleventh = t.try_begin("alice", IP, 1000).unwrap();
        drop(eleventh);
        drop(in_flight);
        assert!(matches!(
            t.try_begin("alice", IP, 1000),
            Err(Blocked::For(_))
        ));
    }

    #[tokio::test]
    async fn a_waiting_attempt_goes_when_one_in_flight_succeeds_and_is_refused_if_all_fail() {
        let t = Arc::new(Throttle::default());
        let begin = |name: &'static str| {
            let t = t.clone();
            tokio::spawn(async move { t.begin(name, IP).await })
        };
        let now = crate::clock::now();
        let mut in_flight: Vec<Attempt> = (0..10)
            .map(|_| t.try_begin("alice", IP, now).unwrap())
            .collect();
        let waiter = begin("alice");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        in_flight.pop().unwrap().succeeded();
        let eleventh = waiter
            .await
            .unwrap()
            .expect("started once a place was free");
        // All ten now in flight fail: the limit is reached by failures.
        in_flight.push(eleventh);
        drop(in_flight);
        assert!(matches!(t.begin("alice", IP).await, Err(s) if s > 250));

        // A waiter whose blockers all fail is refused with the real wait,
        // not after its own time runs out.
        let in_flight: Vec<Attempt> = (0..10)
            .map(|_| t.try_begin("bob", IP, now).unwrap())
            .collect();
        let waiter = begin("bob");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(in_flight);
        assert!(matches!(waiter.await.unwrap(), Err(s) if s > 250));
    }

    #[test]
    fn abandoned_attempts_are_not_failures() {
        let t = Throttle::default();
        for _ in 0..20 {
            t.try_begin("alice", IP, 1000).unwrap().abandon();
        }
        assert_eq!(t.footprint().0, 0);
        assert!(t.try_begin("alice", IP, 1000).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let t = Throttle::default();
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
        // Ten failures from ten addresses of one /64: one client.
        for i in 0..10 {
            fail(&t, "alice", host(i), 1000);
        }
        assert!(matches!(
            t.try_begin("alice", host(999), 1001),
            Err(Blocked::For(_))
        ));
        // The next /64 is another client.
        let next = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(t.try_begin("alice", next, 1001).is_ok());
        // The per-address counter too: 50 names from a /64.
        for i in 0..50 {
            fail(&t, &format!("u{i}"), host(100 + i), 2000);
        }
        assert!(matches!(
            t.try_begin("zed", host(7), 2001),
            Err(Blocked::For(_))
        ));
        // IPv4 addresses stay whole, and a mapped one is its IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(counted_address(mapped), OTHER);
        assert_eq!(counted_address(OTHER), OTHER);
    }

    /// One failure each for 100,000 names of `len` bytes, from distinct
    /// addresses, 100 a second; what the throttle then holds.
    fn many_names(len: usize) -> (Throttle, usize, usize) {
        let t = Throttle::default();
        for i in 0..100_000u32 {
            let name = format!("{i:010}{}", "n".repeat(len - 10));
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            fail(&t, &name, ip, 1_000 + i64::from(i / 100));
        }
        let (keys, bytes) = t.footprint();
        (t, keys, bytes)
    }

    #[test]
    fn a_hundred_thousand_long_usernames_do_not_keep_their_bytes() {
        let (t, keys, bytes) = many_names(1024);
        // Old windows were swept out as the maps grew: two keys (name and
        // address) for each of the 30,000 failures of the last 5 minutes,
        // and at most twice that between sweeps.
        assert!(keys <= 2 * 2 * 30_000, "{keys} keys kept");
        // What is kept does not depend on the names' length (their bytes
        // alone would be 100 MB); the maps' growth varies a little from run
        // to run with the hasher's seed.
        let (_, short_keys, short_bytes) = many_names(10);
        assert_eq!(keys, short_keys);
        assert!(
            bytes < short_bytes + short_bytes / 10,
            "{bytes} / {short_bytes}"
        );
        assert!(bytes < 32_000_000, "{bytes} bytes kept");
        // Once every window has passed, the background prune empties it.
        t.prune(1_000 + 1_000 + WINDOW_SECS);
        assert_eq!(t.footprint().0, 0);
    }
}
