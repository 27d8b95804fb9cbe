//! The secret store: one keychain entry per (server, user) holding a small
//! JSON [`VaultEntry`], so one write is atomic. [`KeyringVault`] is the OS
//! keychain (Secret Service, macOS Keychain, Windows Credential Manager);
//! [`UnavailableVault`] stands in when there is none. Nothing here writes a
//! token anywhere else.

use std::time::Duration;

use latchkey_protocol::secret::{self, ExposeSecret, SecretString};
use latchkey_protocol::{Claims, Jwks, KeySet, TokenError, UserInfo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Windows stores UTF-16 and caps a credential at 2,560 bytes: keep entries
/// well under half that.
pub const MAX_ENTRY_CHARS: usize = 1200;

/// What is kept of one signed-in session. The tokens are secrets: `Debug`
/// shows `[REDACTED]`, and only the keychain write sees their text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaultEntry {
    /// The server URL, normalized.
    pub server: String,
    /// The issuer pinned from the server's metadata at sign-in.
    pub issuer: String,
    pub user: UserInfo,
    pub session_id: String,
    #[serde(serialize_with = "secret::expose")]
    pub access_token: SecretString,
    #[serde(serialize_with = "secret::expose")]
    pub refresh_token: SecretString,
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

impl VaultEntry {
    /// The keychain account name of this entry.
    pub fn account(&self) -> String {
        account_name(&self.server, &self.user.username)
    }

    /// The entry as the keychain stores it: a secret too, as it holds the
    /// tokens.
    pub fn to_json(&self) -> SecretString {
        serde_json::to_string(self).unwrap_or_default().into()
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
        let claims = keys.verify_signed(self.access_token.expose_secret(), &self.issuer)?;
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

/// How long a sign-in waits, at most, for the person to answer the
/// desktop's unlock prompt before it gives up (nothing has been sent yet).
pub const UNLOCK_PROMPT_WAIT: Duration = Duration::from_secs(60);

/// The OS keychain, through `keyring`.
#[derive(Debug, Clone)]
pub struct KeyringVault {
    service: String,
    unlock_wait: Duration,
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
            unlock_wait: UNLOCK_PROMPT_WAIT,
        })
    }

    /// The longest [`Vault::ready_to_store`] waits for an unlock prompt to
    /// be answered ([`UNLOCK_PROMPT_WAIT`] unless set).
    pub fn with_unlock_wait(mut self, wait: Duration) -> Self {
        self.unlock_wait = wait;
        self
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
            // No default keyring yet (keyring's last lookup is there): no
            // entry either; `ready_to_store` asks for one before a sign-in.
            Err(keyring::Error::NoStorageAccess(inner))
                if inner.to_string().contains("no result found") =>
            {
                Ok(None)
            }
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

    /// On Linux: the Secret Service's default collection (where keyring
    /// writes) is unlocked now, asking the desktop to prompt if needed.
    /// Elsewhere the OS unlocks the keychain itself: nothing to check.
    fn ready_to_store(&self) -> Result<()> {
        secret_service::ensure_default_unlocked(self.unlock_wait)
            .map_err(|detail| Error::KeychainUnavailable { detail })
    }
}

#[cfg(not(target_os = "linux"))]
mod secret_service {
    pub(super) fn ensure_default_unlocked(_: std::time::Duration) -> Result<(), String> {
        Ok(())
    }
}

/// The Secret Service D-Bus API, for what `keyring` does not offer: unlock
/// the default collection, with a bounded wait, before a sign-in.
#[cfg(target_os = "linux")]
mod secret_service {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use dbus::arg::{PropMap, RefArg, Variant};
    use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
    use dbus::blocking::{Connection, Proxy};
    use dbus::message::MatchRule;
    use dbus::strings::Path;

    const DEST: &str = "org.freedesktop.secrets";
    const SERVICE_PATH: &str = "/org/freedesktop/secrets";
    const SERVICE: &str = "org.freedesktop.Secret.Service";
    const COLLECTION: &str = "org.freedesktop.Secret.Collection";
    const PROMPT: &str = "org.freedesktop.Secret.Prompt";
    /// One D-Bus call (not a prompt): the service answers in milliseconds,
    /// or is being started on demand.
    const CALL_TIMEOUT: Duration = Duration::from_secs(5);

    const NO_SERVICE: &str = "no Secret Service (e.g. gnome-keyring) is running in this session";

    /// `Err` is the detail of a `KeychainUnavailable`.
    pub(super) fn ensure_default_unlocked(prompt_wait: Duration) -> Result<(), String> {
        let conn = Connection::new_session().map_err(|_| NO_SERVICE.to_string())?;
        let service = conn.with_proxy(DEST, SERVICE_PATH, CALL_TIMEOUT);
        let mut collection = read_default_alias(&service)?;
        if collection.is_none() {
            // No keyring yet (a new account): ask the service to create the
            // default one, which prompts for its password.
            create_default(&conn, &service, prompt_wait)?;
            collection = read_default_alias(&service)?;
        }
        let Some(collection) = collection else {
            return Err("the keychain has no default keyring and none could be created".into());
        };
        if !is_locked(&conn, &collection)? {
            return Ok(());
        }
        let (_, prompt): (Vec<Path<'static>>, Path<'static>) = service
            .method_call(SERVICE, "Unlock", (vec![collection.clone()],))
            .map_err(call_failed)?;
        if !is_root(&prompt) {
            run_prompt(&conn, prompt, prompt_wait)?;
        }
        if is_locked(&conn, &collection)? {
            return Err("the keychain is locked and was not unlocked".into());
        }
        Ok(())
    }

    fn is_root(p: &Path<'_>) -> bool {
        &**p == "/"
    }

    fn call_failed(e: dbus::Error) -> String {
        match e.name() {
            Some(
                "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
                | "org.freedesktop.DBus.Error.Spawn.ChildExited"
                | "org.freedesktop.DBus.Error.Spawn.ExecFailed"
                | "org.freedesktop.DBus.Error.Disconnected",
            ) => NO_SERVICE.into(),
            Some("org.freedesktop.DBus.Error.NoReply" | "org.freedesktop.DBus.Error.Timeout") => {
                "the Secret Service does not answer".into()
            }
            _ => {
                let text = e.message().unwrap_or_else(|| e.name().unwrap_or("unknown"));
                format!(
                    "Secret Service: {}",
                    text.chars().take(160).collect::<String>()
                )
            }
        }
    }

    fn read_default_alias(
        service: &Proxy<'_, &Connection>,
    ) -> Result<Option<Path<'static>>, String> {
        let (path,): (Path<'static>,) = service
            .method_call(SERVICE, "ReadAlias", ("default",))
            .map_err(call_failed)?;
        Ok((!is_root(&path)).then_some(path))
    }

    fn is_locked(conn: &Connection, collection: &Path<'static>) -> Result<bool, String> {
        conn.with_proxy(DEST, collection.clone(), CALL_TIMEOUT)
            .get::<bool>(COLLECTION, "Locked")
            .map_err(call_failed)
    }

    fn create_default(
        conn: &Connection,
        service: &Proxy<'_, &Connection>,
        prompt_wait: Duration,
    ) -> Result<(), String> {
        let mut props = PropMap::new();
        props.insert(
            format!("{COLLECTION}.Label"),
            Variant(Box::new("Login".to_string()) as Box<dyn RefArg>),
        );
        let (_, prompt): (Path<'static>, Path<'static>) = service
            .method_call(SERVICE, "CreateCollection", (props, "default"))
            .map_err(call_failed)?;
        if !is_root(&prompt) {
            run_prompt(conn, prompt, prompt_wait).map_err(|_| {
                "the keychain has no default keyring and none was created".to_string()
            })?;
        }
        Ok(())
    }

    /// Shows a prompt and waits, at most `wait`, for it to complete; a
    /// prompt still open then is dismissed.
    fn run_prompt(conn: &Connection, prompt: Path<'static>, wait: Duration) -> Result<(), String> {
        let done: Arc<Mutex<Option<bool>>> = Arc::default();
        let seen = done.clone();
        let rule = MatchRule::new_signal(PROMPT, "Completed").with_path(prompt.clone());
        let token = conn
            .add_match(rule, move |(dismissed,): (bool,), _: &Connection, _| {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(dismissed);
                false
            })
            .map_err(call_failed)?;
        let proxy = conn.with_proxy(DEST, prompt, CALL_TIMEOUT);
        let outcome = (|| -> Result<(), String> {
            proxy
                .method_call::<(), _, _, _>(PROMPT, "Prompt", ("",))
                .map_err(call_failed)?;
            let deadline = Instant::now() + wait;
            loop {
                if let Some(dismissed) = *done.lock().unwrap_or_else(|p| p.into_inner()) {
                    return if dismissed {
                        Err("the keychain is locked and its unlock prompt was dismissed".into())
                    } else {
                        Ok(())
                    };
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = proxy.method_call::<(), _, _, _>(PROMPT, "Dismiss", ());
                    return Err(format!(
                        "the keychain is locked and its unlock prompt was not answered within {} s",
                        wait.as_secs()
                    ));
                }
                conn.process(left.min(Duration::from_millis(250)))
                    .map_err(call_failed)?;
            }
        })();
        let _ = conn.remove_match(token);
        outcome
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
    fn ready_to_store(&self) -> Result<()> {
        Err(self.error.clone())
    }
}

/// The OS keychain if one is reachable, else an [`UnavailableVault`]
/// carrying the reason. A sign-in waits at most `unlock_wait` for the
/// keychain's unlock prompt to be answered.
pub fn system_vault(service: &str, unlock_wait: Duration) -> std::sync::Arc<dyn Vault> {
    match KeyringVault::new(service) {
        Ok(v) => std::sync::Arc::new(v.with_unlock_wait(unlock_wait)),
        Err(error) => std::sync::Arc::new(UnavailableVault { error }),
    }
}

#[cfg(test)]
mod tests {
    use latchkey_protocol::Jwks;

    use super::*;

    fn entry() -> VaultEntry {
        VaultEntry {
            server: "http://127.0.0.1:1".into(),
            issuer: "http://127.0.0.1:1".into(),
            user: UserInfo {
                id: "u1".into(),
                username: "ann".into(),
            },
            session_id: "s1".into(),
            access_token: "eyJ.access-token-text.sig".into(),
            refresh_token: "refresh-token-text".into(),
            refresh_expires_at: 2_000_000_000,
            jwks: Jwks { keys: vec![] },
            latest_seen_time: 1_900_000_000,
            last_confirmed_at: 1_900_000_000,
            clock_locked: false,
            revoke_pending: true,
        }
    }

    #[test]
    fn debug_never_shows_a_token_but_the_keychain_text_keeps_both() {
        let entry = entry();
        let shown = format!("{entry:?} {entry:#?}");
        assert!(!shown.contains("access-token-text"), "{shown}");
        assert!(!shown.contains("refresh-token-text"), "{shown}");
        assert!(shown.contains("ann") && shown.contains("s1"), "{shown}");

        let json = entry.to_json();
        let back = VaultEntry::from_json(json.expose_secret()).expect("its own JSON decodes");
        assert_eq!(
            back.access_token.expose_secret(),
            "eyJ.access-token-text.sig"
        );
        assert_eq!(back.refresh_token.expose_secret(), "refresh-token-text");
        assert!(back.revoke_pending);
    }
}
