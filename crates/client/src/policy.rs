//! The pure decisions: is a cached session usable offline, when to refresh,
//! how long to wait before the next probe. No I/O, so they are tested
//! exhaustively here.

use std::time::Duration;

use rand::Rng as _;

use crate::vault::VaultEntry;

/// A wall clock set back by more than this is treated as tampering.
pub const CLOCK_SETBACK_TOLERANCE_SECS: i64 = 5 * 60;

/// Why an offline session is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockReason {
    /// The refresh token (the session) has expired.
    RefreshExpired,
    /// The server has not confirmed the session for longer than the grace.
    GraceExceeded,
    /// The clock was set back: locked until the server confirms again.
    ClockSetBack,
}

impl LockReason {
    pub fn sentence(self) -> &'static str {
        match self {
            LockReason::RefreshExpired => {
                "your session has run out; connect to the server to continue"
            }
            LockReason::GraceExceeded => {
                "you have been offline longer than allowed; connect to the server to continue"
            }
            LockReason::ClockSetBack => {
                "the computer's clock was set back; connect to the server to continue"
            }
        }
    }
}

/// The verdict on a cached session while offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Usable offline until `until` (by the wall clock).
    Usable {
        until: i64,
    },
    Locked(LockReason),
}

/// Applies the offline policy at wall time `now`, updating the entry's
/// latest-seen time and clock lock. `floor` is a lower bound on the true
/// time from a monotonic clock (the latest time seen plus the time elapsed
/// since, in this process), so that the wall clock cannot stand still while
/// real time passes. Returns whether the entry changed (and should be
/// written back).
///
/// Time offline is measured as `max(now, floor, latest seen)`, so setting
/// the clock back never buys time; a set-back of more than five minutes
/// locks until the server confirms the session again.
pub fn evaluate(entry: &mut VaultEntry, now: i64, floor: i64, grace: Duration) -> (Verdict, bool) {
    let mut changed = false;
    // Saturating: a damaged entry may hold any time at all.
    let set_back = entry
        .latest_seen_time
        .saturating_sub(CLOCK_SETBACK_TOLERANCE_SECS);
    if now < set_back && !entry.clock_locked {
        entry.clock_locked = true;
        changed = true;
    }
    let seen = now.max(floor);
    if seen > entry.latest_seen_time {
        entry.latest_seen_time = seen;
        changed = true;
    }
    let effective = entry.latest_seen_time;
    if entry.clock_locked {
        return (Verdict::Locked(LockReason::ClockSetBack), changed);
    }
    if effective >= entry.refresh_expires_at {
        return (Verdict::Locked(LockReason::RefreshExpired), changed);
    }
    let grace_end = entry
        .last_confirmed_at
        .saturating_add(grace.as_secs() as i64);
    if effective >= grace_end {
        return (Verdict::Locked(LockReason::GraceExceeded), changed);
    }
    (
        Verdict::Usable {
            until: grace_end.min(entry.refresh_expires_at),
        },
        changed,
    )
}

/// Refresh before use when less than 20% of the access lifetime is left.
pub fn should_refresh(iat: i64, exp: i64, server_now: i64) -> bool {
    let lifetime = (exp - iat).max(1);
    (exp - server_now) * 5 < lifetime
}

/// The wait before offline probe number `attempt` (0-based): 1 s doubling to
/// 15 s, ±20% jitter.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let jitter = rand::thread_rng().gen_range(0.8..=1.2);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_protocol::{Jwks, UserInfo};

    const DAY: i64 = 86_400;
    const GRACE: Duration = Duration::from_secs(7 * DAY as u64);

    fn entry(now: i64) -> VaultEntry {
        VaultEntry {
            server: "http://127.0.0.1:1".into(),
            issuer: "http://127.0.0.1:1".into(),
            user: UserInfo {
                id: "u".into(),
                username: "alice".into(),
            },
            session_id: "s".into(),
            access_token: "a".into(),
            refresh_token: "r".into(),
            refresh_expires_at: now + 30 * DAY,
            jwks: Jwks { keys: vec![] },
            latest_seen_time: now,
            last_confirmed_at: now,
            clock_locked: false,
            revoke_pending: false,
        }
    }

    const NO_FLOOR: i64 = i64::MIN;

    #[test]
    fn usable_within_grace_and_refresh_lifetime() {
        let t = 1_000_000;
        let mut e = entry(t);
        assert_eq!(
            evaluate(&mut e, t + DAY, NO_FLOOR, GRACE).0,
            Verdict::Usable { until: t + 7 * DAY }
        );
        assert_eq!(
            evaluate(&mut e, t + 7 * DAY, NO_FLOOR, GRACE).0,
            Verdict::Locked(LockReason::GraceExceeded)
        );
        let mut e = entry(t);
        e.refresh_expires_at = t + 2 * DAY;
        assert_eq!(
            evaluate(&mut e, t + DAY, NO_FLOOR, GRACE).0,
            Verdict::Usable { until: t + 2 * DAY }
        );
        assert_eq!(
            evaluate(&mut e, t + 2 * DAY, NO_FLOOR, GRACE).0,
            Verdict::Locked(LockReason::RefreshExpired)
        );
    }

    #[test]
    fn a_clock_set_back_far_locks_until_the_server_confirms() {
        let t = 1_000_000;
        let mut e = entry(t);
        evaluate(&mut e, t + DAY, NO_FLOOR, GRACE);
        let (v, changed) = evaluate(&mut e, t + DAY - 301, NO_FLOOR, GRACE);
        assert_eq!(v, Verdict::Locked(LockReason::ClockSetBack));
        assert!(changed && e.clock_locked);
        // putting the clock right does not unlock: only the server does
        assert_eq!(
            evaluate(&mut e, t + DAY + 10, NO_FLOOR, GRACE).0,
            Verdict::Locked(LockReason::ClockSetBack)
        );
    }

    #[test]
    fn small_setbacks_gain_nothing() {
        // Across restarts (no monotonic floor): the latest time seen never
        // goes back, so the grace still ends seven days after it was seen.
        let t = 1_000_000;
        let mut e = entry(t);
        evaluate(&mut e, t + 6 * DAY, NO_FLOOR, GRACE);
        for k in 1..100 {
            let (v, _) = evaluate(&mut e, t + 6 * DAY - 240 * k % 300, NO_FLOOR, GRACE);
            assert_eq!(v, Verdict::Usable { until: t + 7 * DAY });
        }
        assert_eq!(e.latest_seen_time, t + 6 * DAY);
        assert_eq!(
            evaluate(&mut e, t + 7 * DAY, NO_FLOOR, GRACE).0,
            Verdict::Locked(LockReason::GraceExceeded)
        );

        // In one run (monotonic floor): setting the clock back four minutes
        // every four minutes keeps the wall clock still, but real time runs
        // on; the set-backs add up and lock.
        let mut e = entry(t);
        let mut real = t;
        let mut locked = false;
        for k in 1..=10 {
            real += 240;
            let (v, _) = evaluate(&mut e, real - 240 * k, real, GRACE);
            if v == Verdict::Locked(LockReason::ClockSetBack) {
                locked = true;
                break;
            }
        }
        assert!(locked);
        assert_eq!(e.latest_seen_time, real);
    }

    #[test]
    fn refresh_when_under_a_fifth_is_left() {
        assert!(!should_refresh(0, 900, 0));
        assert!(!should_refresh(0, 900, 719));
        assert!(should_refresh(0, 900, 721));
        assert!(should_refresh(0, 900, 2000));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(15));
        for _ in 0..200 {
            let first = backoff(0, min, max).as_secs_f64();
            assert!((0.8..=1.2).contains(&first));
            let third = backoff(2, min, max).as_secs_f64();
            assert!((3.2..=4.8).contains(&third));
            let late = backoff(30, min, max).as_secs_f64();
            assert!((12.0..=18.0).contains(&late));
        }
    }
}
