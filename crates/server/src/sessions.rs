//! Session checks on every authenticated request, kept cheap: sessions are
//! cached in memory, revocations made here are applied at once, and those
//! made by another process on the same database are polled (every 250 ms).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

use latchkey_protocol::Reason;

use crate::error::AppError;
use crate::store::{SessionRecord, Store};

#[derive(Default)]
pub struct Sessions {
    live: RwLock<HashMap<String, SessionRecord>>,
    /// Revoked session ids, with when we learnt of it (to forget them once
    /// no access token of theirs can be valid).
    revoked: RwLock<HashMap<String, (Reason, i64)>>,
    last_seq: AtomicI64,
}

impl Sessions {
    pub async fn new(store: &dyn Store) -> anyhow::Result<Self> {
        let s = Self::default();
        s.last_seq
            .store(store.last_revocation().await?, Ordering::SeqCst);
        Ok(s)
    }

    /// The session of a verified token, or why it is no longer good.
    pub async fn check(
        &self,
        store: &dyn Store,
        sid: &str,
        now: i64,
    ) -> Result<SessionRecord, AppError> {
        if let Some((reason, _)) = self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
        {
            return Err(revoked_error(*reason));
        }
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
                self.live
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(sid.to_owned())
                    .or_insert(s)
                    .clone()
            }
        };
        // A revocation may have landed between the two looks above.
        if let Some((reason, _)) = self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
        {
            return Err(revoked_error(*reason));
        }
        if session.expires_at <= now {
            return Err(AppError::invalid_token(
                "the session has expired",
                Some(Reason::Expired),
            ));
        }
        Ok(session)
    }

    /// Remembers a new session (saves the first request a database read).
    pub fn insert(&self, session: SessionRecord) {
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id.clone(), session);
    }

    /// Applies a revocation to every later request.
    pub fn mark_revoked(&self, sid: &str, reason: Reason, now: i64) {
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sid.to_owned(), (reason, now));
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sid);
    }

    /// Applies revocations made since the last poll, by any process.
    pub async fn poll(&self, store: &dyn Store, now: i64) -> anyhow::Result<()> {
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
