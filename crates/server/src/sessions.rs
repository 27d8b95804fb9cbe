//! Session checks on every authenticated request, kept cheap: sessions are
//! cached in memory, revocations made here are applied at once, and those
//! made by another process on the same database are polled (every 250 ms).
//!
//! Both caches are bounded: entries past their time are pruned, and a full
//! cache drops those that end soonest. That loses nothing: the database
//! holds every session and its revocation, and a session not in the cache
//! is read from it again.
//!
//! Every revocation this process learns of, from any source (logout here,
//! refresh-token reuse, the poll of other processes' revocations), passes
//! through [`Sessions::mark_revoked`], which also ends the session's live
//! streams ([`crate::live`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use latchkey_protocol::Reason;

use crate::error::AppError;
use crate::evict::evict_soonest;
use crate::live::{Live, Watch};
use crate::store::{self, SessionRecord, Store};

/// The sessions and revocations cached for the check of every request.
pub struct Sessions {
    live: RwLock<HashMap<String, SessionRecord>>,
    /// Revoked session ids, with when we learnt of it (to forget them once
    /// no access token of theirs can be valid).
    revoked: RwLock<HashMap<String, (Reason, i64)>>,
    last_seq: AtomicI64,
    /// The most entries each map keeps.
    max: usize,
    /// Told of every revocation, for the live streams.
    streams: Arc<Live>,
}

const SESSIONS_MAX: usize = 100_000;

impl Sessions {
    /// The caches, empty, and the revocations polled from the newest one on;
    /// revocations are passed on to `streams`.
    pub async fn new(store: &dyn Store, streams: Arc<Live>) -> store::Result<Self> {
        let s = Self::with_capacity(SESSIONS_MAX, streams);
        s.last_seq
            .store(store.last_revocation().await?, Ordering::SeqCst);
        Ok(s)
    }

    /// Caches of at most `max` sessions and `max` revocations.
    pub fn with_capacity(max: usize, streams: Arc<Live>) -> Self {
        Self {
            live: RwLock::default(),
            revoked: RwLock::default(),
            last_seq: AtomicI64::new(0),
            max: max.max(1),
            streams,
        }
    }

    /// Sessions and revocations cached now.
    pub fn cached(&self) -> (usize, usize) {
        (
            self.live.read().unwrap_or_else(|p| p.into_inner()).len(),
            self.revoked.read().unwrap_or_else(|p| p.into_inner()).len(),
        )
    }

    fn cache_live(&self, session: SessionRecord) -> SessionRecord {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if live.len() >= self.max && !live.contains_key(&session.id) {
            evict_soonest(&mut live, self.max - self.max / 4, |s| s.expires_at);
        }
        live.entry(session.id.clone()).or_insert(session).clone()
    }

    /// `Err` if `sid` is known to be revoked.
    fn not_revoked(&self, sid: &str) -> Result<(), AppError> {
        match self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
        {
            Some((reason, _)) => Err(revoked_error(*reason)),
            None => Ok(()),
        }
    }

    /// The session of a verified token, or why it is no longer good.
    pub async fn check(
        &self,
        store: &dyn Store,
        sid: &str,
        now: i64,
    ) -> Result<SessionRecord, AppError> {
        self.not_revoked(sid)?;
        let cached = self
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
            .cloned();
        let session = match cached {
            Some(s) => s,
            None => {
                let Some(s) = store.session(sid).await? else {
                    return Err(AppError::invalid_token(
                        "the token's session does not exist",
                        Some(Reason::Invalid),
                    ));
                };
                if let Some(reason) = s.revoked {
                    self.mark_revoked(sid, reason, now);
                    return Err(revoked_error(reason));
                }
                self.cache_live(s)
            }
        };
        // A revocation may have landed between the two looks above.
        self.not_revoked(sid)?;
        if session.expires_at <= now {
            return Err(AppError::invalid_token(
                "the session has expired",
                Some(Reason::Expired),
            ));
        }
        Ok(session)
    }

    /// A revocation the database told of: applied here as
    /// [`Sessions::mark_revoked`] does, and the error to answer.
    pub fn revoked_in_store(&self, sid: &str, reason: Reason, now: i64) -> AppError {
        self.mark_revoked(sid, reason, now);
        revoked_error(reason)
    }

    /// Remembers a new session (saves the first request a database read).
    pub fn insert(&self, session: SessionRecord) {
        self.cache_live(session);
    }

    /// Applies a revocation to every later request, and ends the session's
    /// live streams.
    pub fn mark_revoked(&self, sid: &str, reason: Reason, now: i64) {
        {
            let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
            if revoked.len() >= self.max && !revoked.contains_key(sid) {
                // The oldest revocations go first: a session not found here
                // is read from the database, which says it is revoked.
                evict_soonest(&mut revoked, self.max - self.max / 4, |(_, at)| *at);
            }
            revoked.insert(sid.to_owned(), (reason, now));
        }
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sid);
        // After the insert above: see `watch`.
        self.streams.session_revoked(sid, reason);
    }

    /// Watches the revocation of `sid`, for a live stream: the value turns
    /// `Some(reason)` when it is revoked, and already is if it was.
    pub fn watch(&self, sid: &str) -> Watch<Option<Reason>> {
        let watch = self.streams.watch_session(sid);
        // Subscribed first, then looked up: a revocation marked before the
        // subscription is found here, one marked after it is published to
        // it (`mark_revoked` records before it publishes).
        let known = self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
            .map(|(reason, _)| *reason);
        if let Some(reason) = known {
            self.streams.session_revoked(sid, reason);
        }
        watch
    }

    /// Applies revocations made since the last poll, by any process.
    pub async fn poll(&self, store: &dyn Store, now: i64) -> store::Result<()> {
        let since = self.last_seq.load(Ordering::SeqCst);
        for r in store.revocations_since(since).await? {
            self.mark_revoked(&r.session_id, r.reason, now);
            self.last_seq.fetch_max(r.seq, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Forgets what no longer matters: sessions past their end, and
    /// revocations older than any access token of theirs could be.
    pub fn prune(&self, now: i64, access_ttl: u64) {
        let keep = (access_ttl + latchkey_protocol::MAX_LEEWAY_SECS) as i64;
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, at)| *at + keep > now);
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.expires_at > now);
    }
}

fn revoked_error(reason: Reason) -> AppError {
    let description = match reason {
        Reason::Reused => "the session was ended because a refresh token was reused",
        Reason::Expired => "the session has expired",
        _ => "the session has been revoked",
    };
    AppError::invalid_token(description, Some(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, expires_at: i64) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            user_id: "u".into(),
            username: "ann".into(),
            created_at: 0,
            expires_at,
            revoked: None,
        }
    }

    #[test]
    fn the_caches_stay_within_their_bound() {
        let s = Sessions::with_capacity(100, Arc::default());
        for i in 0..10_000 {
            s.insert(session(&format!("s{i}"), 1_000 + i));
            s.mark_revoked(&format!("r{i}"), Reason::Revoked, i);
            let (live, revoked) = s.cached();
            assert!(live <= 100 && revoked <= 100, "{live} {revoked}");
        }
        // What is kept is what ends last, and the latest revocations.
        let live = s.live.read().unwrap();
        assert!(live.contains_key("s9999"));
        assert!(!live.contains_key("s0"));
        let revoked = s.revoked.read().unwrap();
        assert!(revoked.contains_key("r9999"));
        assert!(!revoked.contains_key("r0"));
    }

    #[test]
    fn sessions_past_their_end_and_old_revocations_are_pruned() {
        let s = Sessions::with_capacity(100, Arc::default());
        s.insert(session("ends", 1_000));
        s.insert(session("stays", 5_000));
        s.mark_revoked("old", Reason::Revoked, 100);
        s.mark_revoked("recent", Reason::Reused, 200);
        // Access tokens live 900 s, plus at most 60 s of leeway: 960 s.
        s.prune(1_100, 900);
        let live = s.live.read().unwrap();
        assert!(!live.contains_key("ends") && live.contains_key("stays"));
        let revoked = s.revoked.read().unwrap();
        assert!(!revoked.contains_key("old") && revoked.contains_key("recent"));
    }
}
