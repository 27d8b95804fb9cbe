//! The secret store: one keychain entry per (server, user) holding a small
//! JSON [`VaultEntry`], so one write is atomic. [`KeyringVault`] is the OS
//! keychain (Secret Service, macOS Keychain, Windows Credential Manager);
//! [`MemoryVault`] is for tests. Nothing here writes a token anywhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use latchkey_protocol::{Claims, Jwks, KeySet, TokenError, UserInfo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Windows stores UTF-16 and caps a credential at 2,560 bytes: keep entries
/// well under half that.
pub const MAX_ENTRY_CHARS: usize = 1200;

/// What is kept of one signed-in session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultEntry {
    /// The server URL, normalized.
    pub server: String,
    /// The issuer pinned from the server's metadata at sign-in.
    pub issuer: String,
    pub user: UserInfo,
    pub session_id: String,
    pub access_token: String,
    pub refresh_token: String,
    /// When the session (every refresh token of it) ends, server time.
    pub refresh_expires_at: i64,
    /// Only the keys that can verify the current access token.
    pub jwks: Jwks,
    /// The latest wall-clock time seen: time offline never runs backwards.
    pub latest_seen_time: i64,
    /// The last time the server confirmed the session.
    pub last_confirmed_at: i64,
    /// Set when the clock was found set back: locked until the server confirms.
    #[serde(default)]
    pub clock_locked: bool,
    /// Signed out while offline: kept only until the server has revoked it.
    #[serde(default)]
    pub revoke_pending: bool,
}

impl std::fmt::Debug for VaultEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultEntry")
            .field("server", &self.server)
            .field("issuer", &self.issuer)
            .field("user", &self.user)
            .field("session_id", &self.session_id)
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("refresh_expires_at", &self.refresh_expires_at)
            .field("latest_seen_time", &self.latest_seen_time)
            .field("last_confirmed_at", &self.last_confirmed_at)
            .field("clock_locked", &self.clock_locked)
            .field("revoke_pending", &self.revoke_pending)
            .finish()
    }
}

impl VaultEntry {
    /// The keychain account name of this entry.
    pub fn account(&self) -> String {
        account_name(&self.server, &self.user.username)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a stored entry; anything malformed is `None` (treated as no
    /// session, never trusted in part).
    pub fn from_json(s: &str) -> Option<Self> {
        if s.len() > 16 * 1024 {
            return None;
        }
        serde_json::from_str(s).ok()
    }

    /// Verifies the stored access token offline, against the stored keys:
    /// signature, header, issuer and audience, and that it is this user's
    /// and this session's. Not time: the offline policy judges that.
    pub fn verify(&self) -> std::result::Result<(KeySet, Claims), TokenError> {
        let keys = KeySet::from_jwks(&self.jwks).map_err(|_| TokenError::UnknownKey)?;
        let claims = keys.verify_signed(&self.access_token, &self.issuer)?;
        if claims.sub != self.user.id || claims.sid != self.session_id {
            return Err(TokenError::Signature);
        }
        Ok((keys, claims))
    }
}

/// The keychain account of a (server, username).
pub fn account_name(server: &str, username: &str) -> String {
    format!("{username}@{server}")
}

/// A store for secrets. Calls may block (D-Bus): run them off the runtime.
pub trait Vault: Send + Sync + 'static {
    fn load(&self, account: &str) -> Result<Option<String>>;
    fn store(&self, account: &str, secret: &str) -> Result<()>;
    /// Deleting what is not there is fine.
    fn delete(&self, account: &str) -> Result<()>;
    /// Makes sure a [`Vault::store`] can succeed now, before a sign-in sends
    /// the password: a locked keychain is asked to unlock (the desktop shows
    /// its own prompt), and one that stays locked or is absent is
    /// [`Error::KeychainUnavailable`] at once.
    fn ready_to_store(&self) -> Result<()> {
        Ok(())
    }
}

/// The OS keychain, through `keyring`.
#[derive(Debug, Clone)]
pub struct KeyringVault {
    service: String,
}

fn keychain_error(e: keyring::Error) -> Error {
    let detail = match &e {
        keyring::Error::NoStorageAccess(_) => {
            "the keychain is locked or refused access".to_string()
        }
        keyring::Error::PlatformFailure(inner) => {
            let s = inner.to_string();
            if s.contains("autolaunch")
                || s.contains("ServiceUnknown")
                || s.contains("org.freedesktop.secrets")
                || s.contains("DBus")
                || s.contains("D-Bus")
            {
                "no Secret Service (e.g. gnome-keyring) is running in this session".to_string()
            } else {
                s.chars().take(160).collect()
            }
        }
        other => other.to_string().chars().take(160).collect(),
    };
    Error::KeychainUnavailable { detail }
}

impl KeyringVault {
    /// Entries under `service` (e.g. `latchkey`). Refuses keyring's mock
    /// store, which would silently keep tokens in memory only.
    pub fn new(service: &str) -> Result<Self> {
        let probe = keyring::Entry::new(service, "probe").map_err(keychain_error)?;
        if probe
            .get_credential()
            .downcast_ref::<keyring::mock::MockCredential>()
            .is_some()
        {
            return Err(Error::KeychainUnavailable {
                detail: "this build has no keychain backend".into(),
            });
        }
        Ok(Self {
            service: service.into(),
        })
    }

    fn entry(&self, account: &str) -> Result<keyring::Entry> {
        keyring::Entry::new(&self.service, account).map_err(keychain_error)
    }
}

impl Vault for KeyringVault {
    fn load(&self, account: &str) -> Result<Option<String>> {
        match self.entry(account)?.get_password() {
            Ok(s) => Ok(Some(s)),
            Err(keyring::Error::NoEntry) => Ok(None),
            // A damaged entry is no session, not an outage.
            Err(keyring::Error::BadEncoding(_)) => Ok(None),
            Err(e) => Err(keychain_error(e)),
        }
    }

    fn store(&self, account: &str, secret: &str) -> Result<()> {
        self.entry(account)?
            .set_password(secret)
            .map_err(keychain_error)
    }

    fn delete(&self, account: &str) -> Result<()> {
        match self.entry(account)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(keychain_error(e)),
        }
    }
}

/// The vault when no keychain could be opened: every call fails with the
/// reason, so the app runs, shows why, and never keeps a token elsewhere.
#[derive(Debug, Clone)]
pub struct UnavailableVault {
    pub error: Error,
}

impl Vault for UnavailableVault {
    fn load(&self, _: &str) -> Result<Option<String>> {
        Err(self.error.clone())
    }
    fn store(&self, _: &str, _: &str) -> Result<()> {
        Err(self.error.clone())
    }
    fn delete(&self, _: &str) -> Result<()> {
        Err(self.error.clone())
    }
}

/// The OS keychain if one is reachable, else an [`UnavailableVault`]
/// carrying the reason.
pub fn system_vault(service: &str) -> std::sync::Arc<dyn Vault> {
    match KeyringVault::new(service) {
        Ok(v) => std::sync::Arc::new(v),
        Err(error) => std::sync::Arc::new(UnavailableVault { error }),
    }
}

/// An in-memory vault for tests; clones share contents. It can be made
/// unavailable to simulate a keychain that goes away.
#[derive(Debug, Clone, Default)]
pub struct MemoryVault {
    inner: Arc<Mutex<(HashMap<String, String>, bool)>>,
}

impl MemoryVault {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail with `keychain_unavailable` (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1 = unavailable;
    }

    /// A raw look at what is stored (tests check nothing leaks).
    pub fn raw(&self, account: &str) -> Option<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(account)
            .cloned()
    }

    /// Every account stored.
    pub fn accounts(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .keys()
            .cloned()
            .collect()
    }

    /// Overwrites an entry behind the engine's back (tests tamper with it).
    pub fn put_raw(&self, account: &str, value: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .insert(account.into(), value.into());
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, String>) -> T) -> Result<T> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1 {
            return Err(Error::KeychainUnavailable {
                detail: "the test keychain is switched off".into(),
            });
        }
        Ok(f(&mut g.0))
    }
}

impl Vault for MemoryVault {
    fn load(&self, account: &str) -> Result<Option<String>> {
        self.with(|m| m.get(account).cloned())
    }

    fn store(&self, account: &str, secret: &str) -> Result<()> {
        self.with(|m| {
            m.insert(account.into(), secret.into());
        })
    }

    fn delete(&self, account: &str) -> Result<()> {
        self.with(|m| {
            m.remove(account);
        })
    }
}
