//! Failed-login throttling (PROTOCOL.md): after 10 failures for one username
//! from one client address within 5 minutes, or 50 from one address, every
//! attempt from there is refused with 429 until the window passes. Other
//! addresses are never affected, so nobody can lock a user out remotely.
//! An IPv6 client is counted by its /64: one host is given a whole one.
//!
//! The attempts are counted in the store ([`Store::begin_attempt`]), so
//! every server instance on one database shares one budget: three
//! instances do not give an attacker three. An attempt counts against the
//! limits from the moment it starts, so a burst of parallel guesses cannot
//! slip past them; it becomes a failure when it fails (or is dropped half
//! way) and is forgotten when it succeeds. An attempt that finds the limit
//! reached only by attempts still in flight waits for them (at most
//! [`MAX_WAIT`]) instead of being refused, so that parallel correct
//! sign-ins never refuse each other. Attempts older than the window are
//! pruned in the background.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

use crate::store::{AttemptKey, AttemptLimits, AttemptOutcome, AttemptStart, Store, StoreError};

pub const WINDOW_SECS: i64 = 300;
pub const PER_USER_LIMIT: usize = 10;
pub const PER_ADDRESS_LIMIT: usize = 50;
/// The longest an attempt waits for attempts in flight to finish.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// A waiting attempt looks again this often: attempts in flight through
/// other instances end without this one hearing of it.
const LOOK_AGAIN: Duration = Duration::from_millis(50);

const LIMITS: AttemptLimits = AttemptLimits {
    window: WINDOW_SECS,
    per_user: PER_USER_LIMIT,
    per_address: PER_ADDRESS_LIMIT,
};

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

fn attempt_key(username: &str, ip: IpAddr) -> AttemptKey {
    AttemptKey {
        user: Sha256::digest(username.as_bytes()).into(),
        address: counted_address(ip).to_string(),
    }
}

/// Why an attempt may not start.
#[derive(Debug)]
pub enum Refused {
    /// The limit is reached by failures: try again in this many seconds.
    For(u64),
    /// The limit is reached only with attempts still in flight (and the
    /// wait for them ran out, or was not asked for).
    InFlight,
    /// The store could not be asked.
    Store(StoreError),
}

impl Refused {
    /// The seconds to tell the client to wait, if it is the client's limit.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refused::For(secs) => Some(*secs),
            Refused::InFlight => Some(1),
            Refused::Store(_) => None,
        }
    }
}

/// The throttle: attempts counted in the store.
pub struct Throttle {
    store: Arc<dyn Store>,
    /// Woken whenever an attempt of this process ends.
    finished: Arc<Notify>,
}

/// An attempt in progress. End it with [`Attempt::succeeded`],
/// [`Attempt::failed`] or [`Attempt::abandon`]; dropped without, it is a
/// failure.
pub struct Attempt {
    store: Arc<dyn Store>,
    finished: Arc<Notify>,
    id: i64,
    ended: bool,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt").field("id", &self.id).finish()
    }
}

impl Attempt {
    /// The attempt signed in: it was no failure, and the user's earlier
    /// failures from this address are forgiven.
    pub async fn succeeded(self) {
        self.end(AttemptOutcome::Succeeded).await;
    }

    /// A wrong password.
    pub async fn failed(self) {
        self.end(AttemptOutcome::Failed).await;
    }

    /// The attempt ended before any password was checked (the server was
    /// busy): it is neither a failure nor a success.
    pub async fn abandon(self) {
        self.end(AttemptOutcome::Abandoned).await;
    }

    async fn end(mut self, outcome: AttemptOutcome) {
        self.ended = true;
        end(&self.store, &self.finished, self.id, outcome).await;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Dropped half way (the client went away mid-hash): a failure.
        let (store, finished, id) = (self.store.clone(), self.finished.clone(), self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { end(&store, &finished, id, AttemptOutcome::Failed).await });
            }
            // No runtime left: the attempt stays in flight until its window
            // passes, counted as it would have been.
            Err(_) => tracing::warn!("a sign-in attempt dropped without a runtime to end it"),
        }
    }
}

async fn end(store: &Arc<dyn Store>, finished: &Notify, id: i64, outcome: AttemptOutcome) {
    if let Err(e) = store.end_attempt(id, outcome).await {
        // It stays in flight until its window passes.
        tracing::warn!(error = %e, "could not end a sign-in attempt");
    }
    finished.notify_waiters();
}

impl Throttle {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            finished: Arc::default(),
        }
    }

    /// Starts an attempt, waiting (at most [`MAX_WAIT`]) while the limits
    /// are reached only by attempts in flight.
    pub async fn begin(&self, username: &str, ip: IpAddr) -> Result<Attempt, Refused> {
        let key = attempt_key(username, ip);
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            // Registered before looking, so no end in between is missed.
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.start(&key, crate::clock::now()).await {
                Err(Refused::InFlight) => {
                    let look = (tokio::time::Instant::now() + LOOK_AGAIN).min(deadline);
                    let _ = tokio::time::timeout_at(look, notified).await;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Refused::InFlight);
                    }
                }
                other => return other,
            }
        }
    }

    /// Starts an attempt at `now` without waiting.
    pub async fn try_begin(
        &self,
        username: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<Attempt, Refused> {
        self.start(&attempt_key(username, ip), now).await
    }

    async fn start(&self, key: &AttemptKey, now: i64) -> Result<Attempt, Refused> {
        match self.store.begin_attempt(key, LIMITS, now).await {
            Ok(AttemptStart::Started(id)) => Ok(Attempt {
                store: self.store.clone(),
                finished: self.finished.clone(),
                id,
                ended: false,
            }),
            Ok(AttemptStart::Blocked(secs)) => Err(Refused::For(secs)),
            Ok(AttemptStart::InFlight) => Err(Refused::InFlight),
            Err(e) => Err(Refused::Store(e)),
        }
    }

    /// Drops attempts whose window has passed (background upkeep).
    pub async fn prune(&self, now: i64) -> crate::store::Result<usize> {
        self.store.prune_attempts(now - WINDOW_SECS).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    /// A throttle on a store of its own (and the folder that holds it).
    async fn throttle() -> (Throttle, Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let at = crate::store::Location::Sqlite(dir.path().join("t.db"));
        let store = crate::store::open(&at).await.unwrap();
        (Throttle::new(store.clone()), store, dir)
    }

    /// A failed attempt at `now`.
    async fn fail(t: &Throttle, user: &str, ip: IpAddr, now: i64) {
        t.try_begin(user, ip, now).await.unwrap().failed().await;
    }

    fn blocked_for(r: Result<Attempt, Refused>) -> u64 {
        match r {
            Err(Refused::For(secs)) => secs,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn ten_failures_block_that_user_from_that_address_only() {
        let (t, _, _dir) = throttle().await;
        for i in 0..10 {
            fail(&t, "alice", IP, 1000 + i).await;
        }
        assert_eq!(blocked_for(t.try_begin("alice", IP, 1010).await), 290);
        assert!(t.try_begin("alice", OTHER, 1010).await.is_ok());
        assert!(t.try_begin("bob", IP, 1010).await.is_ok());
        // the window passes
        assert!(t.try_begin("alice", IP, 1300).await.is_ok());
    }

    #[tokio::test]
    async fn fifty_failures_block_the_address() {
        let (t, _, _dir) = throttle().await;
        for i in 0..50 {
            fail(&t, &format!("user{i}"), IP, 1000).await;
        }
        blocked_for(t.try_begin("someone", IP, 1001).await);
        assert!(t.try_begin("someone", OTHER, 1001).await.is_ok());
    }

    #[tokio::test]
    async fn success_is_not_a_failure_and_forgives_the_users_failures() {
        let (t, _, _dir) = throttle().await;
        for i in 0..30 {
            t.try_begin("alice", IP, 1000 + i)
                .await
                .unwrap()
                .succeeded()
                .await;
        }
        for _ in 0..9 {
            fail(&t, "alice", IP, 1040).await;
        }
        t.try_begin("alice", IP, 1040)
            .await
            .unwrap()
            .succeeded()
            .await;
        // The nine are forgiven for alice: nine more do not block her...
        for _ in 0..9 {
            fail(&t, "alice", IP, 1041).await;
        }
        t.try_begin("alice", IP, 1042)
            .await
            .unwrap()
            .abandon()
            .await;
        // ...but still count for the address (18 of 50, plus 32 more).
        for i in 0..32 {
            fail(&t, &format!("u{i}"), IP, 1043).await;
        }
        blocked_for(t.try_begin("zed", IP, 1044).await);
    }

    #[tokio::test]
    async fn attempts_in_flight_count_but_ask_to_wait_not_to_go_away() {
        let (t, _, _dir) = throttle().await;
        let mut in_flight = Vec::new();
        for _ in 0..10 {
            in_flight.push(t.try_begin("alice", IP, 1000).await.unwrap());
        }
        // The eleventh parallel attempt may not start yet...
        assert!(matches!(
            t.try_begin("alice", IP, 1000).await,
            Err(Refused::InFlight)
        ));
        // ...once one succeeds it may; had they all failed, it is refused.
        in_flight.pop().unwrap().succeeded().await;
        let eleventh = t.try_begin("alice", IP, 1000).await.unwrap();
        in_flight.push(eleventh);
        for a in in_flight {
            a.failed().await;
        }
        blocked_for(t.try_begin("alice", IP, 1000).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_attempt_goes_when_one_in_flight_succeeds_and_is_refused_if_all_fail() {
        let (t, _, _dir) = throttle().await;
        let t = Arc::new(t);
        let begin = |name: &'static str| {
            let t = t.clone();
            tokio::spawn(async move { t.begin(name, IP).await })
        };
        let now = crate::clock::now();
        let mut in_flight = Vec::new();
        for _ in 0..10 {
            in_flight.push(t.try_begin("alice", IP, now).await.unwrap());
        }
        let waiter = begin("alice");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished());
        in_flight.pop().unwrap().succeeded().await;
        let eleventh = waiter
            .await
            .unwrap()
            .expect("started once a place was free");
        // All ten now in flight fail: the limit is reached by failures.
        in_flight.push(eleventh);
        for a in in_flight {
            a.failed().await;
        }
        assert!(blocked_for(t.begin("alice", IP).await) > 250);

        // A waiter whose blockers all fail (one dropped half way) is
        // refused with the real wait, not after its own time runs out.
        let mut in_flight = Vec::new();
        for _ in 0..10 {
            in_flight.push(t.try_begin("bob", IP, now).await.unwrap());
        }
        let waiter = begin("bob");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished());
        drop(in_flight.pop());
        for a in in_flight {
            a.failed().await;
        }
        assert!(blocked_for(waiter.await.unwrap()) > 250);
    }

    #[tokio::test]
    async fn abandoned_attempts_are_not_failures() {
        let (t, store, _dir) = throttle().await;
        for _ in 0..20 {
            t.try_begin("alice", IP, 1000)
                .await
                .unwrap()
                .abandon()
                .await;
        }
        assert!(t.try_begin("alice", IP, 1000).await.is_ok());
        assert_eq!(
            store.prune_attempts(i64::MAX).await.unwrap(),
            1,
            "one in flight, no rows of the abandoned"
        );
    }

    #[tokio::test]
    async fn an_ipv6_client_is_counted_by_its_64() {
        let (t, _, _dir) = throttle().await;
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
        // Ten failures from ten addresses of one /64: one client.
        for i in 0..10 {
            fail(&t, "alice", host(i), 1000).await;
        }
        blocked_for(t.try_begin("alice", host(999), 1001).await);
        // The next /64 is another client.
        let next = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(t.try_begin("alice", next, 1001).await.is_ok());
        // The per-address counter too: 50 names from a /64.
        for i in 0..50 {
            fail(&t, &format!("u{i}"), host(100 + i), 2000).await;
        }
        blocked_for(t.try_begin("zed", host(7), 2001).await);
        // IPv4 addresses stay whole, and a mapped one is its IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(counted_address(mapped), OTHER);
        assert_eq!(counted_address(OTHER), OTHER);
    }

    #[tokio::test]
    async fn two_servers_on_one_store_share_one_budget_and_old_windows_are_pruned() {
        let (a, store, _dir) = throttle().await;
        let b = Throttle::new(store.clone());
        // Five failures through each: ten for the one user and address.
        for i in 0..5 {
            fail(&a, "alice", IP, 1000 + i).await;
            fail(&b, "alice", IP, 1000 + i).await;
        }
        blocked_for(a.try_begin("alice", IP, 1010).await);
        blocked_for(b.try_begin("alice", IP, 1010).await);
        // Attempts in flight through one count for the other.
        let mut in_flight = Vec::new();
        for _ in 0..10 {
            in_flight.push(a.try_begin("carol", IP, 1010).await.unwrap());
        }
        assert!(matches!(
            b.try_begin("carol", IP, 1010).await,
            Err(Refused::InFlight)
        ));
        for x in in_flight {
            x.abandon().await;
        }
        // Once every window has passed, the upkeep empties the table.
        assert_eq!(a.prune(1000 + WINDOW_SECS + 100).await.unwrap(), 10);
        assert!(b.try_begin("alice", IP, 1400).await.is_ok());
    }
}
