//! The hub behind the live-updates stream (`GET /v1/sync/events`,
//! PROTOCOL.md v1.1 "Live updates"): who is watching which user's rev and
//! which session's revocation, and the signal that ends every stream when
//! the server shuts down.
//!
//! Everything is a `tokio::sync::watch` channel, one per key, made when the
//! first stream subscribes and dropped with the last one, so the maps hold
//! only what open streams watch and an idle stream is woken by nothing but
//! its own keep-alive timer:
//! * one per user, holding the user's latest rev. A push (here, or one the
//!   upkeep poll learns of from another instance) raises it; a watch keeps
//!   only the newest value, which is all a stream sends (`changed` carries
//!   the latest cursor, not each rev).
//! * one per session, turning `Some(reason)` when it is revoked. Chosen over
//!   one broadcast channel of every revocation: that would wake every open
//!   stream for each logout anywhere, and a stream lagging behind a burst
//!   (a `user revoke` of many sessions) would have to look its session up
//!   again. Here a revocation wakes only the streams of that session, and a
//!   session nobody streams costs one map lookup.
//!
//! Pushes through other instances on the same store are learnt by the
//! upkeep poll ([`Live::poll`]): the store numbers every rev change, and
//! each poll reads the users changed since the last one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use latchkey_protocol::Reason;
use tokio::sync::watch;

use crate::store::{self, Store};

/// The channels open streams listen on.
pub struct Live {
    revs: Topics<i64>,
    sessions: Topics<Option<Reason>>,
    closing: watch::Sender<bool>,
    /// The store's last rev change seen by [`Live::poll`].
    last_change: AtomicI64,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            revs: Topics::default(),
            sessions: Topics::default(),
            closing: watch::Sender::new(false),
            last_change: AtomicI64::new(0),
        }
    }
}

/// Rev changes read per query by [`Live::poll`].
const POLL_BATCH: usize = 1_000;

impl Live {
    /// The hub, learning other instances' pushes from the newest on.
    pub async fn new(store: &dyn Store) -> store::Result<Self> {
        let live = Self::default();
        live.last_change
            .store(store.last_rev_change().await?, Ordering::SeqCst);
        Ok(live)
    }

    /// Passes on the rev changes committed since the last poll, by any
    /// process (this one's are passed on at once as well, which wakes
    /// nobody twice: see [`Live::rev_advanced`]).
    pub async fn poll(&self, store: &dyn Store) -> store::Result<()> {
        loop {
            let since = self.last_change.load(Ordering::SeqCst);
            let changes = store.rev_changes_since(since, POLL_BATCH).await?;
            for c in &changes {
                self.rev_advanced(&c.user_id, c.rev);
                self.last_change.fetch_max(c.seq, Ordering::SeqCst);
            }
            if changes.len() < POLL_BATCH {
                return Ok(());
            }
        }
    }

    /// Watches `user_id`'s latest rev (0 until something raises it).
    pub fn watch_user(&self, user_id: &str) -> Watch<i64> {
        self.revs.subscribe(user_id, 0)
    }

    /// `user_id`'s rev is now at least `rev`: wakes their streams if that
    /// is news to them. Never lowers the value, so the order in which a
    /// push and a poll report the same rev does not matter.
    pub fn rev_advanced(&self, user_id: &str, rev: i64) {
        self.revs.publish(user_id, |latest| {
            if rev > *latest {
                *latest = rev;
                true
            } else {
                false
            }
        });
    }

    /// Watches the revocation of session `sid` (`None` while it is live).
    /// See [`crate::sessions::Sessions::watch`], which also covers a
    /// revocation that landed before this call.
    pub fn watch_session(&self, sid: &str) -> Watch<Option<Reason>> {
        self.sessions.subscribe(sid, None)
    }

    /// Session `sid` was revoked: ends its streams.
    pub fn session_revoked(&self, sid: &str, reason: Reason) {
        self.sessions.publish(sid, |now| {
            let news = now.is_none();
            *now = Some(reason);
            news
        });
    }

    /// The server is shutting down: every stream ends, so that a graceful
    /// shutdown does not wait for them forever. Streams opened later end
    /// at once.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Turns true when the server shuts down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// How many users and sessions are watched now.
    pub fn watched(&self) -> (usize, usize) {
        (self.revs.len(), self.sessions.len())
    }
}

type Map<T> = Arc<Mutex<HashMap<String, watch::Sender<T>>>>;

/// One watch channel per key, made on demand.
struct Topics<T> {
    map: Map<T>,
}

impl<T> Default for Topics<T> {
    fn default() -> Self {
        Self {
            map: Arc::default(),
        }
    }
}

impl<T> Topics<T> {
    fn subscribe(&self, key: &str, initial: T) -> Watch<T> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let rx = match map.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(initial);
                map.insert(key.to_owned(), tx);
                rx
            }
        };
        Watch {
            rx,
            key: key.to_owned(),
            map: self.map.clone(),
        }
    }

    /// Changes the value of `key`, if anyone watches it; `modify` says
    /// whether that is news (only then are the watchers woken).
    fn publish(&self, key: &str, modify: impl FnOnce(&mut T) -> bool) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(key) {
            tx.send_if_modified(modify);
        }
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A subscription to one key: a `watch::Receiver` (through `Deref`) that
/// takes its channel out of the map when the last one of the key is
/// dropped.
pub struct Watch<T> {
    rx: watch::Receiver<T>,
    key: String,
    map: Map<T>,
}

impl<T> std::ops::Deref for Watch<T> {
    type Target = watch::Receiver<T>;
    fn deref(&self) -> &Self::Target {
        &self.rx
    }
}

impl<T> std::ops::DerefMut for Watch<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rx
    }
}

impl<T> Drop for Watch<T> {
    fn drop(&mut self) {
        // Under the lock, so no subscriber can join between the count and
        // the removal; ours is the one receiver still counted.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_live_as_long_as_their_watchers() {
        let live = Live::default();
        let a = live.watch_user("u");
        let b = live.watch_user("u");
        let s = live.watch_session("s");
        assert_eq!(live.watched(), (1, 1));
        drop(a);
        assert_eq!(live.watched(), (1, 1), "b still watches u");
        drop(b);
        drop(s);
        assert_eq!(live.watched(), (0, 0));
        // Nobody watches: publishing makes no channel.
        live.rev_advanced("u", 5);
        live.session_revoked("s", Reason::Revoked);
        assert_eq!(live.watched(), (0, 0));
        assert_eq!(*live.watch_user("u").borrow(), 0);
    }

    #[test]
    fn a_rev_only_wakes_when_it_grows() {
        let live = Live::default();
        let mut w = live.watch_user("u");
        live.rev_advanced("u", 7);
        assert!(w.has_changed().unwrap());
        assert_eq!(*w.borrow_and_update(), 7);
        live.rev_advanced("u", 7);
        live.rev_advanced("u", 3);
        assert!(!w.has_changed().unwrap());
        assert_eq!(*w.borrow(), 7);
        // Another user's rev is not this one's.
        live.rev_advanced("v", 9);
        assert!(!w.has_changed().unwrap());
    }

    #[test]
    fn a_revocation_reaches_only_its_session() {
        let live = Live::default();
        let mut mine = live.watch_session("s1");
        let mut other = live.watch_session("s2");
        live.session_revoked("s1", Reason::Reused);
        assert!(mine.has_changed().unwrap());
        assert_eq!(*mine.borrow_and_update(), Some(Reason::Reused));
        assert!(!other.has_changed().unwrap());
        assert_eq!(*other.borrow_and_update(), None);
    }

    #[test]
    fn closing_reaches_streams_opened_before_and_after() {
        let live = Live::default();
        let before = live.closing();
        live.close();
        assert!(*before.borrow());
        assert!(*live.closing().borrow());
    }
}
