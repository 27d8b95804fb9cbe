//! Failed-login throttling (PROTOCOL.md): after 10 failures for one username
//! from one client address within 5 minutes, or 50 from one address, every
//! attempt from there is refused with 429 until the window passes. Other
//! addresses are never affected, so nobody can lock a user out remotely.
//!
//! An attempt is counted as a failure when it starts and forgiven if it
//! succeeds, so a burst of parallel guesses cannot slip past the limit.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

pub const WINDOW_SECS: i64 = 300;
pub const PER_USER_LIMIT: usize = 10;
pub const PER_ADDRESS_LIMIT: usize = 50;
/// Past this many tracked keys, stale ones are swept out.
const SWEEP_AT: usize = 10_000;

#[derive(Default)]
pub struct Throttle {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    per_user: HashMap<(String, IpAddr), VecDeque<i64>>,
    per_address: HashMap<IpAddr, VecDeque<i64>>,
}

/// An attempt in progress; [`Throttle::succeeded`] forgives it.
#[derive(Debug)]
pub struct Attempt {
    username: String,
    ip: IpAddr,
    at: i64,
}

fn expire(q: &mut VecDeque<i64>, now: i64) {
    while q.front().is_some_and(|&t| t + WINDOW_SECS <= now) {
        q.pop_front();
    }
}

/// Seconds until the oldest failure that keeps `q` at `limit` leaves the window.
fn retry_after(q: &VecDeque<i64>, limit: usize, now: i64) -> Option<u64> {
    if q.len() < limit {
        return None;
    }
    let oldest_blocking = q[q.len() - limit];
    Some((oldest_blocking + WINDOW_SECS - now).max(1) as u64)
}

impl Throttle {
    /// Starts an attempt, or says how many seconds to wait.
    pub fn begin(&self, username: &str, ip: IpAddr, now: i64) -> Result<Attempt, u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.per_user.len() + st.per_address.len() > SWEEP_AT {
            st.per_user.retain(|_, q| {
                expire(q, now);
                !q.is_empty()
            });
            st.per_address.retain(|_, q| {
                expire(q, now);
                !q.is_empty()
            });
        }
        let key = (username.to_owned(), ip);
        let user_q = st.per_user.entry(key.clone()).or_default();
        expire(user_q, now);
        let user_wait = retry_after(user_q, PER_USER_LIMIT, now);
        let addr_q = st.per_address.entry(ip).or_default();
        expire(addr_q, now);
        let addr_wait = retry_after(addr_q, PER_ADDRESS_LIMIT, now);
        if let Some(wait) = user_wait.max(addr_wait) {
            return Err(wait);
        }
        st.per_address.entry(ip).or_default().push_back(now);
        st.per_user.entry(key).or_default().push_back(now);
        Ok(Attempt {
            username: username.to_owned(),
            ip,
            at: now,
        })
    }

    /// The attempt signed in: it was no failure, and the user's earlier
    /// failures from this address are forgiven.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.per_user.remove(&(attempt.username, attempt.ip));
        if let Some(q) = st.per_address.get_mut(&attempt.ip)
            && let Some(pos) = q.iter().rposition(|&t| t == attempt.at)
        {
            q.remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn ten_failures_block_that_user_from_that_address_only() {
        let t = Throttle::default();
        for i in 0..10 {
            t.begin("alice", IP, 1000 + i).unwrap();
        }
        assert_eq!(t.begin("alice", IP, 1010).unwrap_err(), 290);
        assert!(t.begin("alice", OTHER, 1010).is_ok());
        assert!(t.begin("bob", IP, 1010).is_ok());
        // the window passes
        assert!(t.begin("alice", IP, 1300).is_ok());
    }

    #[test]
    fn fifty_failures_block_the_address() {
        let t = Throttle::default();
        for i in 0..50 {
            t.begin(&format!("user{i}"), IP, 1000).unwrap();
        }
        assert!(t.begin("someone", IP, 1001).is_err());
        assert!(t.begin("someone", OTHER, 1001).is_ok());
    }

    #[test]
    fn success_is_not_a_failure() {
        let t = Throttle::default();
        for i in 0..30 {
            let a = t.begin("alice", IP, 1000 + i).unwrap();
            t.succeeded(a);
        }
        assert!(t.begin("alice", IP, 1040).is_ok());
    }
}
