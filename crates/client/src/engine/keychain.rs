//! The engine's side of the OS keychain: every call on the blocking pool,
//! and the gate that lets only the active session's entry be written.

use std::sync::{Arc, Mutex};

use latchkey_protocol::ExposeSecret;

use super::blocking::{blocking, lock};
use crate::error::{Error, Result};
use crate::status::StatusError;
use crate::vault::{MAX_ENTRY_CHARS, Vault, VaultEntry};

/// The vault, called off the runtime, behind the active entry's gate.
pub(crate) struct Keychain {
    vault: Arc<dyn Vault>,
    /// The keychain account whose entry may be written: the active one.
    /// Every write of the active entry checks it under this lock, so a late
    /// write can never bring back an entry that sign-out or the end of the
    /// session has deleted.
    gate: Arc<Mutex<Option<String>>>,
    /// The keychain refused a write of the active session (shown until a
    /// write works again): the session goes on from memory.
    error: Mutex<Option<StatusError>>,
}

impl Keychain {
    pub(crate) fn new(vault: Arc<dyn Vault>) -> Self {
        Self {
            vault,
            gate: Arc::default(),
            error: Mutex::default(),
        }
    }

    pub(crate) async fn load(&self, account: &str) -> Result<Option<String>> {
        let (vault, account) = (self.vault.clone(), account.to_owned());
        blocking(move || vault.load(&account)).await
    }

    /// The entry `account` holds now, once the keychain is known to be
    /// able to take a new one.
    pub(crate) async fn load_ready(&self, account: &str) -> Result<Option<String>> {
        let (vault, account) = (self.vault.clone(), account.to_owned());
        blocking(move || {
            let existing = vault.load(&account)?;
            vault.ready_to_store()?;
            Ok(existing)
        })
        .await
    }

    /// Stores an entry that is not the active session's (no gate).
    pub(crate) async fn store(&self, account: &str, entry: &VaultEntry) -> Result<()> {
        let (vault, account, json) = (self.vault.clone(), account.to_owned(), entry.to_json());
        blocking(move || vault.store(&account, json.expose_secret())).await
    }

    pub(crate) async fn delete(&self, account: &str) -> Result<()> {
        let (vault, account) = (self.vault.clone(), account.to_owned());
        blocking(move || vault.delete(&account)).await
    }

    /// Deletes an entry, only logging a failure.
    pub(crate) async fn forget(&self, account: &str) {
        if let Err(e) = self.delete(account).await {
            tracing::warn!(error = %e, "could not delete a keychain entry");
        }
    }

    /// Opens the gate to `account`'s entry: the active one from now on.
    pub(crate) fn open(&self, account: String) {
        *lock(&self.gate) = Some(account);
    }

    /// Writes the active account's entry (nothing if it is no longer active).
    pub(crate) async fn write(&self, entry: &VaultEntry) -> Result<()> {
        let (vault, gate, entry) = (self.vault.clone(), self.gate.clone(), entry.clone());
        blocking(move || write_if_active(&*vault, &gate, &entry)).await
    }

    /// Writes the active account's entry without waiting, only logging a
    /// failure.
    pub(crate) fn write_later(&self, entry: VaultEntry) {
        let (vault, gate) = (self.vault.clone(), self.gate.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write_if_active(&*vault, &gate, &entry) {
                tracing::warn!(error = %e, "could not write the session to the keychain");
            }
        });
    }

    /// Writes the active session's entry mid-session. A failure does not end
    /// the session, which goes on from memory, but is shown until a write
    /// works again.
    pub(crate) async fn persist(&self, entry: &VaultEntry) {
        let result = self.write(entry).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "could not write the session to the keychain");
        }
        *lock(&self.error) = result.err().map(|e| {
            let detail = match e {
                Error::KeychainUnavailable { detail } => detail,
                other => other.to_string(),
            };
            StatusError {
                code: "keychain_unavailable".into(),
                message: format!(
                    "the system keychain stopped taking the sign-in ({detail}); you stay signed in until Latchkey closes, then you will have to sign in again"
                ),
            }
        });
    }

    /// The last mid-session write failed: why, as the status shows it.
    pub(crate) fn error(&self) -> Option<StatusError> {
        lock(&self.error).clone()
    }

    pub(crate) fn clear_error(&self) {
        *lock(&self.error) = None;
    }

    /// Closes the gate (no more writes of the active entry), then deletes
    /// the entry.
    pub(crate) async fn close(&self, account: &str) -> Result<()> {
        let (vault, gate, account) = (self.vault.clone(), self.gate.clone(), account.to_owned());
        blocking(move || {
            let mut gate = lock(&gate);
            *gate = None;
            vault.delete(&account)
        })
        .await
    }
}

/// Writes `entry` if its account is the active one, under the gate's lock.
fn write_if_active(
    vault: &dyn Vault,
    gate: &Mutex<Option<String>>,
    entry: &VaultEntry,
) -> Result<()> {
    let gate = lock(gate);
    if gate.as_deref() != Some(entry.account().as_str()) {
        return Ok(());
    }
    let json = entry.to_json();
    let json = json.expose_secret();
    if json.len() > MAX_ENTRY_CHARS {
        tracing::warn!(
            len = json.len(),
            "the keychain entry is larger than planned"
        );
    }
    vault.store(&entry.account(), json)
}
