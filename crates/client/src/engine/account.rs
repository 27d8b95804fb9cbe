//! One signed-in account as the session holds it in memory: its keychain
//! entry, verified keys and claims, the refresh bookkeeping, the monotonic
//! floor under the wall clock, and its local notes. Also where a user's
//! local data lives.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey_protocol::{Claims, Jwks, KeySet, SecretString, TokenError, TokenResponse};
use sha2::{Digest as _, Sha256};

use super::blocking::blocking;
use crate::error::{Error, Result};
use crate::policy::{self, LockReason, Verdict};
use crate::store::{LocalStore, SyncRecord};
use crate::vault::VaultEntry;

/// latest_seen_time is written back to the keychain at most this often.
const PERSIST_SEEN_EVERY_SECS: i64 = 60;

/// The folder of one user's local data.
pub fn user_dir(data_dir: &Path, server: &str, user_id: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{server}\n{user_id}").as_bytes());
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    data_dir.join("users").join(name)
}

/// Opens the local notes of `entry`'s user.
pub(crate) async fn open_store(data_dir: &Path, entry: &VaultEntry) -> Result<LocalStore> {
    let path = user_dir(data_dir, &entry.server, &entry.user.id).join("notes.db");
    blocking(move || LocalStore::open(&path)).await
}

/// What a refresh starts from, taken from the account.
pub(crate) struct Renewal {
    pub(crate) server: String,
    pub(crate) issuer: String,
    pub(crate) refresh_token: SecretString,
    pub(crate) keys: KeySet,
    pub(crate) jwks: Jwks,
}

/// The signed-in account.
pub(crate) struct Account {
    pub(crate) entry: VaultEntry,
    pub(crate) keys: KeySet,
    pub(crate) claims: Claims,
    /// Bumped by every refresh: lets concurrent callers share one.
    pub(crate) generation: u64,
    /// latest_seen_time as last written to the keychain.
    persisted_seen: i64,
    /// A monotonic reading taken when latest_seen_time was `.1`: real time
    /// passes even if the wall clock is held back.
    seen_mono: (std::time::Instant, i64),
    /// A refresh was sent and its answer never came: the server may have
    /// spent the refresh token. The next contact refreshes at once, inside
    /// the server's 60 s retry window, whatever the access token's age.
    pub(crate) refresh_in_doubt: bool,
    pub(crate) store: Arc<Mutex<LocalStore>>,
}

impl Account {
    pub(crate) fn new(entry: VaultEntry, keys: KeySet, claims: Claims, store: LocalStore) -> Self {
        Self {
            persisted_seen: entry.latest_seen_time,
            seen_mono: (std::time::Instant::now(), entry.latest_seen_time),
            entry,
            keys,
            claims,
            generation: 0,
            refresh_in_doubt: false,
            store: Arc::new(Mutex::new(store)),
        }
    }

    /// Verifies a stored entry (signature, issuer, audience, that the token
    /// is this user's and this session's; not time) and opens the user's
    /// local data.
    pub(crate) async fn open(entry: VaultEntry, data_dir: &Path) -> Result<Self> {
        let (keys, claims) = entry.verify()?;
        let store = open_store(data_dir, &entry).await?;
        Ok(Self::new(entry, keys, claims, store))
    }

    /// A lower bound on the true time, from the monotonic clock.
    fn floor(&self) -> i64 {
        let (since, seen) = self.seen_mono;
        seen.saturating_add(since.elapsed().as_secs() as i64)
    }

    /// The server has just confirmed the session at local time `now`: the
    /// confirmation restarts the offline grace, and `now` becomes the latest
    /// time seen and the monotonic floor. Resetting them (not only moving
    /// them forward) matters after a clock that ran fast was corrected:
    /// otherwise the latest time seen stays in the future and every offline
    /// period locks as "clock set back" until real time catches up. Only a
    /// confirmation may move them back: offline, they only grow.
    pub(crate) fn confirmed(&mut self, now: i64) {
        self.entry.last_confirmed_at = now;
        self.entry.latest_seen_time = now;
        self.entry.clock_locked = false;
        self.seen_mono = (std::time::Instant::now(), now);
        self.persisted_seen = now;
    }

    /// Applies the offline policy at `now`. Returns the verdict, and the
    /// entry when it should be written back to the keychain (the clock was
    /// found set back, or the latest time seen moved far enough).
    pub(crate) fn evaluate(&mut self, now: i64, grace: Duration) -> (Verdict, Option<VaultEntry>) {
        let floor = self.floor();
        let (verdict, changed) = policy::evaluate(&mut self.entry, now, floor, grace);
        let persist = changed
            && (self.entry.clock_locked
                || self
                    .entry
                    .latest_seen_time
                    .saturating_sub(self.persisted_seen)
                    >= PERSIST_SEEN_EVERY_SECS);
        if !persist {
            return (verdict, None);
        }
        self.persisted_seen = self.entry.latest_seen_time;
        (verdict, Some(self.entry.clone()))
    }

    /// Why the offline policy locks the account at `now`, if it does; the
    /// entry is left as it is.
    pub(crate) fn locked(&self, now: i64, grace: Duration) -> Option<LockReason> {
        let mut entry = self.entry.clone();
        match policy::evaluate(&mut entry, now, self.floor(), grace) {
            (Verdict::Locked(reason), _) => Some(reason),
            _ => None,
        }
    }

    /// The pending count and the sync record, unless a sync holds the store.
    pub(crate) fn figures(&self) -> Option<(u64, SyncRecord)> {
        let store = self.store.try_lock().ok()?;
        Some((
            store.pending_count().unwrap_or(0),
            store.last_sync().unwrap_or_default(),
        ))
    }

    /// What a refresh starts from.
    pub(crate) fn renewal(&self) -> Renewal {
        Renewal {
            server: self.entry.server.clone(),
            issuer: self.entry.issuer.clone(),
            refresh_token: self.entry.refresh_token.clone(),
            keys: self.keys.clone(),
            jwks: self.entry.jwks.clone(),
        }
    }

    /// The server rotated the refresh token at local time `now`; returns the
    /// entry to keep.
    pub(crate) fn rotated(&mut self, tokens: &TokenResponse, now: i64) -> VaultEntry {
        self.entry.refresh_token = tokens.refresh_token.clone();
        self.entry.refresh_expires_at = now + tokens.refresh_expires_in as i64;
        self.refresh_in_doubt = false;
        self.entry.clone()
    }

    /// A refreshed access token, verified with `renewal`'s keys, takes over
    /// at local time `now`: a new generation. Returns the entry to keep.
    pub(crate) fn refreshed(
        &mut self,
        access_token: SecretString,
        renewal: Renewal,
        claims: Claims,
        now: i64,
    ) -> Result<VaultEntry> {
        if claims.sub != self.entry.user.id {
            return Err(Error::Token(TokenError::Signature));
        }
        self.entry.access_token = access_token;
        self.entry.jwks = renewal.jwks;
        self.confirmed(now);
        self.keys = renewal.keys;
        self.claims = claims;
        self.generation += 1;
        Ok(self.entry.clone())
    }
}
