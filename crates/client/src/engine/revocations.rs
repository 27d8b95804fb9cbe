//! Signed-out sessions the server has not revoked yet. A session signed out
//! while offline keeps its refresh token until the server has revoked it:
//! in a keychain entry of its own (per server and session, so a new sign-in
//! of the same user never overwrites it), listed in the prefs, tried on
//! every contact with a server until one confirms.

use std::sync::Arc;

use super::keychain::Keychain;
use super::prefs::Prefs;
use super::report::{Reporter, Wake};
use crate::api::{self, Timeouts};
use crate::error::{Error, Result};
use crate::http::Http;
use crate::vault::VaultEntry;

/// The signed-out sessions whose revocation is owed.
pub(crate) struct Revocations {
    keychain: Arc<Keychain>,
    prefs: Arc<Prefs>,
    http: Arc<dyn Http>,
    timeouts: Timeouts,
    reporter: Arc<Reporter>,
}

impl Revocations {
    pub(crate) fn new(
        keychain: Arc<Keychain>,
        prefs: Arc<Prefs>,
        http: Arc<dyn Http>,
        timeouts: Timeouts,
        reporter: Arc<Reporter>,
    ) -> Self {
        Self {
            keychain,
            prefs,
            http,
            timeouts,
            reporter,
        }
    }

    /// Some are still owed.
    pub(crate) fn any(&self) -> bool {
        self.prefs.has_pending_revocations()
    }

    /// Revokes a signed-out session on the server or, offline (or if the
    /// server does not answer), parks it for later.
    pub(crate) async fn revoke_or_park(&self, entry: &VaultEntry) -> Result<()> {
        let revoked = self.reporter.ensure_network().is_ok()
            && api::revoke(
                self.http.as_ref(),
                &entry.server,
                &entry.refresh_token,
                self.timeouts,
            )
            .await
            .is_ok();
        if revoked {
            return Ok(());
        }
        let parked = self.park(entry).await;
        // Now that it is listed: the loop retries it.
        self.reporter.wake(Wake::Changed);
        parked
    }

    /// Keeps a signed-out session's refresh token until the server has
    /// revoked it.
    pub(crate) async fn park(&self, entry: &VaultEntry) -> Result<()> {
        let key = format!("{}#revoke:{}", entry.account(), entry.session_id);
        let mut pending = entry.clone();
        pending.revoke_pending = true;
        self.keychain.store(&key, &pending).await?;
        self.prefs.add_revocation(key);
        self.prefs.save().await
    }

    /// Revokes sessions signed out while offline; true when none are left.
    pub(crate) async fn retry(&self) -> bool {
        let pending = self.prefs.pending_revocations();
        if pending.is_empty() || self.reporter.ensure_network().is_err() {
            return pending.is_empty();
        }
        let mut done = Vec::new();
        for key in pending {
            if self.revoke(&key).await {
                done.push(key);
            }
        }
        let none_left = self.prefs.remove_revocations(&done);
        if let Err(e) = self.prefs.save().await {
            tracing::warn!(error = %e, "could not save engine state");
        }
        none_left
    }

    /// Tries one parked session; true when it is done with: revoked, over
    /// already, or no longer in the keychain.
    async fn revoke(&self, key: &str) -> bool {
        let entry = match self.keychain.load(key).await {
            Ok(Some(raw)) => VaultEntry::from_json(&raw),
            Ok(None) => None,
            Err(_) => return false,
        };
        let Some(entry) = entry.filter(|e| e.revoke_pending) else {
            return true;
        };
        match api::revoke(
            self.http.as_ref(),
            &entry.server,
            &entry.refresh_token,
            self.timeouts,
        )
        .await
        {
            Ok(()) | Err(Error::SessionExpired | Error::SessionRevoked) => {
                match self.keychain.delete(key).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not delete a revoked session from the keychain");
                        false
                    }
                }
            }
            Err(_) => false,
        }
    }
}
