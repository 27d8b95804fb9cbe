//! The session: one signed-in account at a time and its state machine
//! (signed out, active, ended by the server), sign-in and sign-out, the
//! single-flight refresh, the authenticated calls made with it, and the
//! session's part of the status, with the offline policy applied.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use latchkey_protocol::{
    Claims, ExposeSecret, KeySet, MAX_DEVICE_NAME_CHARS, Reason, SecretString, SessionInfo,
    TokenResponse, UserInfo,
};

use super::account::{Account, Renewal, open_store, user_dir};
use super::blocking::{blocking, lock};
use super::config::Config;
use super::keychain::Keychain;
use super::prefs::Prefs;
use super::report::{ActiveView, Reporter, SessionView, Wake};
use super::revocations::Revocations;
use super::tokens::{ServerClock, Verifier};
use crate::api::{self, Answer, ApiError, Timeouts};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::http::{Http, normalize_server_url};
use crate::policy;
use crate::status::{SessionState, StatusError};
use crate::store::LocalStore;
use crate::vault::{VaultEntry, account_name};

/// The server ended the session.
struct Ended {
    state: SessionState,
    user: UserInfo,
    server: String,
    /// The ended session's notes: they stay open for saves (the user may be
    /// typing when the session ends), which sync after the same user signs
    /// in again.
    store: Arc<Mutex<LocalStore>>,
}

impl Ended {
    /// The notes' pending count, unless a sync holds the store.
    fn pending(&self) -> Option<u64> {
        let store = self.store.try_lock().ok()?;
        Some(store.pending_count().unwrap_or(0))
    }
}

/// The session state machine: the active account, or the one the server
/// ended, and the refresh shared by every caller.
pub(crate) struct Session {
    data_dir: PathBuf,
    offline_grace: Duration,
    timeouts: Timeouts,
    http: Arc<dyn Http>,
    clock: ServerClock,
    verifier: Verifier,
    keychain: Arc<Keychain>,
    prefs: Arc<Prefs>,
    revocations: Arc<Revocations>,
    reporter: Arc<Reporter>,
    account: Mutex<Option<Account>>,
    ended: Mutex<Option<Ended>>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Lets work that must not be cancelled (a refresh) run on its own task.
    me: Weak<Session>,
}

impl Session {
    pub(crate) fn new(
        config: &Config,
        http: Arc<dyn Http>,
        clock: Arc<dyn Clock>,
        keychain: Arc<Keychain>,
        prefs: Arc<Prefs>,
        revocations: Arc<Revocations>,
        reporter: Arc<Reporter>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            data_dir: config.data_dir.clone(),
            offline_grace: config.offline_grace,
            timeouts: config.timeouts,
            verifier: Verifier::new(http.clone(), config.timeouts, config.leeway),
            http,
            clock: ServerClock::new(clock),
            keychain,
            prefs,
            revocations,
            reporter,
            account: Mutex::new(None),
            ended: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            me: me.clone(),
        })
    }

    /// Local time.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    pub(crate) fn has_session(&self) -> bool {
        lock(&self.account).is_some()
    }

    /// The active account's server.
    pub(crate) fn server(&self) -> Result<String> {
        let acc = lock(&self.account);
        let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
        Ok(acc.entry.server.clone())
    }

    /// The active account's notes, for sync.
    pub(crate) fn store(&self) -> Result<Arc<Mutex<LocalStore>>> {
        lock(&self.account)
            .as_ref()
            .map(|a| a.store.clone())
            .ok_or(Error::NotSignedIn)
    }

    /// The notes the user may read and edit now: the active account's,
    /// unless the offline policy locks them, or an ended session's.
    pub(crate) fn notes_store(&self) -> Result<Arc<Mutex<LocalStore>>> {
        let acc = lock(&self.account);
        let Some(acc) = acc.as_ref() else {
            return lock(&self.ended)
                .as_ref()
                .map(|e| e.store.clone())
                .ok_or(Error::NotSignedIn);
        };
        if !self.reporter.online()
            && let Some(reason) = acc.locked(self.now(), self.offline_grace)
        {
            return Err(Error::Locked(reason.sentence().into()));
        }
        Ok(acc.store.clone())
    }

    /// Evaluates the session now (the offline policy may have run out) and
    /// publishes the status.
    pub(crate) fn publish(&self) {
        let (view, persist) = self.view();
        if let Some(entry) = persist {
            self.keychain.write_later(entry);
        }
        self.reporter.publish(view);
    }

    /// The session's part of the status, and the entry to write back if
    /// the offline policy moved it.
    fn view(&self) -> (SessionView, Option<VaultEntry>) {
        let mut acc = lock(&self.account);
        let Some(acc) = acc.as_mut() else {
            let view = match lock(&self.ended).as_ref() {
                Some(e) => {
                    SessionView::Ended(e.state, e.user.clone(), e.server.clone(), e.pending())
                }
                None => SessionView::SignedOut,
            };
            return (view, None);
        };
        let (verdict, persist) = acc.evaluate(self.now(), self.offline_grace);
        let view = SessionView::Active(ActiveView {
            user: acc.entry.user.clone(),
            server: acc.entry.server.clone(),
            access_expires_at: acc.claims.exp,
            verdict,
            keychain_error: self.keychain.error(),
            figures: acc.figures(),
        });
        (view, persist)
    }

    /// Shows `e` as the status' last error.
    pub(crate) fn show_error(&self, e: &Error) {
        self.reporter.set_error(Some(e.into()));
        self.publish();
    }

    /// A request failed for want of a network: offline now.
    pub(crate) fn lost_network(&self, e: &Error) {
        if matches!(e, Error::Network { .. }) {
            let was = self.reporter.went_offline();
            self.publish();
            if was {
                self.reporter.wake(Wake::Changed);
            }
        }
    }

    /// `/healthz` on the account's server.
    pub(crate) async fn probe(&self) -> Result<()> {
        let server = self.server()?;
        let date = api::healthz(self.http.as_ref(), &server, self.timeouts).await?;
        self.clock.note(date);
        Ok(())
    }

    /// Restores the last account from the keychain and local data: no
    /// network needed.
    pub(crate) async fn restore(&self) {
        let Some((server, username)) = self.prefs.last_account() else {
            return;
        };
        let account = account_name(&server, &username);
        let raw = match self.keychain.load(&account).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return,
            Err(e) => return self.reporter.set_error(Some((&e).into())),
        };
        let failed = |message: &str| StatusError {
            code: "token_invalid".into(),
            message: message.into(),
        };
        let Some(entry) = VaultEntry::from_json(&raw) else {
            self.reporter
                .set_error(Some(failed("the stored sign-in is damaged; sign in again")));
            return self.keychain.forget(&account).await;
        };
        if entry.revoke_pending {
            return;
        }
        match Account::open(entry, &self.data_dir).await {
            Ok(acc) => {
                self.keychain.open(acc.entry.account());
                *lock(&self.account) = Some(acc);
            }
            Err(Error::Token(e)) => {
                tracing::warn!(error = %e, "the stored access token failed verification");
                self.reporter.set_error(Some(failed(&format!(
                    "the stored sign-in could not be verified ({e}); sign in again"
                ))));
                self.keychain.forget(&account).await;
            }
            Err(e) => self.reporter.set_error(Some((&e).into())),
        }
    }

    /// Signs in with a password. The tokens go to the keychain only; the
    /// issuer is pinned from the server's metadata.
    pub(crate) async fn sign_in(
        &self,
        server_url: &str,
        username: &str,
        password: &str,
    ) -> Result<()> {
        self.reporter.ensure_network()?;
        let server = normalize_server_url(server_url)?;
        let username = username.trim();
        if username.is_empty() || password.is_empty() {
            return Err(Error::InvalidInput(
                "enter a username and a password".into(),
            ));
        }
        self.make_room(&server, username).await?;
        let (entry, keys, claims) = self.obtain(&server, username, password).await?;
        let store = self.keep(&entry).await?;
        self.install(Account::new(entry, keys, claims, store)).await
    }

    /// Before the password is sent: the keychain can take the session, and
    /// no other session stands in the new one's way.
    async fn make_room(&self, server: &str, username: &str) -> Result<()> {
        // Fail before sending the password when there is nowhere safe to keep the session.
        let existing = self
            .keychain
            .load_ready(&account_name(server, username))
            .await?;
        if let Some(old) = existing.as_deref().and_then(VaultEntry::from_json)
            && old.revoke_pending
        {
            // Signed out offline by an older Latchkey, which kept the entry
            // to revoke under the account's own name: the new session is
            // about to take that name, so the old one moves to its own.
            self.revocations.park(&old).await?;
        }
        if self.has_session() {
            // One account at a time: the current one signs out first.
            self.sign_out(false).await?;
        }
        Ok(())
    }

    /// The name this device signs in with: the user's choice, else the
    /// machine's host name.
    pub(crate) fn device_name(&self) -> String {
        self.prefs.device_name().unwrap_or_else(host_name)
    }

    /// Sets the name the next sign-in uses (`None` or blank: the host name).
    pub(crate) async fn set_device_name(&self, name: Option<&str>) -> Result<()> {
        let name = name.map(str::trim).filter(|n| !n.is_empty());
        if let Some(n) = name {
            check_device_name(n)?;
        }
        self.prefs.set_device_name(name.map(str::to_owned));
        self.prefs.save().await
    }

    /// The password grant: the server's metadata (the issuer to pin), its
    /// keys, the tokens, and their verification. A session that fails it is
    /// revoked at once.
    async fn obtain(
        &self,
        server: &str,
        username: &str,
        password: &str,
    ) -> Result<(VaultEntry, KeySet, Claims)> {
        let (http, t) = (self.http.as_ref(), self.timeouts);
        let meta = api::metadata(http, server, t)
            .await
            .inspect_err(|e| self.lost_network(e))?;
        let (mut jwks, mut keys) = self.verifier.fetch_keys(server).await?;
        let device = self.device_name();
        let answer = api::password_grant(http, server, username, password, &device, t).await?;
        self.clock.note(answer.server_time);
        let tokens = answer.value;
        let verified = self
            .verifier
            .verify(
                server,
                &meta.issuer,
                &mut keys,
                &mut jwks,
                tokens.access_token.expose_secret(),
                self.clock.server_now(),
            )
            .await;
        let claims = match verified {
            Ok(c) => c,
            Err(e) => {
                let _ = api::revoke(http, server, &tokens.refresh_token, t).await;
                return Err(e);
            }
        };
        let now = self.now();
        let entry = VaultEntry {
            server: server.to_owned(),
            issuer: meta.issuer,
            user: tokens.user,
            session_id: tokens.session_id,
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            refresh_expires_at: now + tokens.refresh_expires_in as i64,
            jwks,
            latest_seen_time: now,
            last_confirmed_at: now,
            clock_locked: false,
            revoke_pending: false,
        };
        Ok((entry, keys, claims))
    }

    /// Keeps a new session: its entry in the keychain (the active one now)
    /// and its user's notes opened. If either fails, the server-side session
    /// is revoked.
    async fn keep(&self, entry: &VaultEntry) -> Result<LocalStore> {
        let revoke = || {
            api::revoke(
                self.http.as_ref(),
                &entry.server,
                &entry.refresh_token,
                self.timeouts,
            )
        };
        self.keychain.open(entry.account());
        if let Err(e) = self.keychain.write(entry).await {
            self.keychain.shut();
            // No safe home for the refresh token: end the session we just made.
            let _ = revoke().await;
            return Err(e);
        }
        match open_store(&self.data_dir, entry).await {
            Ok(store) => Ok(store),
            Err(e) => {
                let _ = revoke().await;
                let _ = self.keychain.close(&entry.account()).await;
                Err(e)
            }
        }
    }

    /// A new session takes over: online, no error, remembered for the next
    /// start.
    async fn install(&self, acc: Account) -> Result<()> {
        let (server, username) = (acc.entry.server.clone(), acc.entry.user.username.clone());
        *lock(&self.account) = Some(acc);
        // Work offline may have been switched on meanwhile.
        self.reporter.came_online();
        self.reporter.set_error(None);
        *lock(&self.ended) = None;
        self.keychain.clear_error();
        self.prefs.set_last_account(server, username);
        self.prefs.save().await?;
        self.publish();
        self.reporter.wake(Wake::Edited);
        Ok(())
    }

    /// Ends the session in the app at once; revokes it on the server, or,
    /// offline, keeps the refresh token (marked) until it can. `wipe` also
    /// deletes the user's local notes and unsynced changes.
    pub(crate) async fn sign_out(&self, wipe: bool) -> Result<()> {
        let taken = lock(&self.account).take();
        *lock(&self.ended) = None;
        let Some(acc) = taken else {
            self.publish();
            return Ok(());
        };
        self.reporter.went_offline();
        self.reporter.set_error(None);
        self.publish();
        let entry = acc.entry.clone();
        let user_data = user_dir(&self.data_dir, &entry.server, &entry.user.id);
        drop(acc);
        let parked = self.revocations.revoke_or_park(&entry).await;
        // The session leaves the keychain's account entry either way: it
        // must not come back at the next start.
        self.keychain.close(&entry.account()).await?;
        parked?;
        if wipe {
            blocking(move || match std::fs::remove_dir_all(&user_data) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            })
            .await?;
        }
        Ok(())
    }

    /// The live-updates stream said the session is over.
    pub(crate) async fn ended_by_server(&self, reason: Reason) {
        let e = match reason {
            Reason::Expired => Error::SessionExpired,
            _ => Error::SessionRevoked,
        };
        self.end(&e).await;
    }

    /// The server ended the session: keep the local data, forget the tokens.
    async fn end(&self, e: &Error) {
        let state = if matches!(e, Error::SessionExpired) {
            SessionState::Expired
        } else {
            SessionState::Revoked
        };
        // The account becomes the ended one in one step: there is no moment
        // when nobody seems signed in (a save then would be refused, and
        // the status would read signed out).
        let acc = {
            let mut account = lock(&self.account);
            let Some(acc) = account.take() else {
                return;
            };
            *lock(&self.ended) = Some(Ended {
                state,
                user: acc.entry.user.clone(),
                server: acc.entry.server.clone(),
                store: acc.store.clone(),
            });
            acc
        };
        // The dead tokens leave the keychain before the end is published.
        if let Err(e) = self.keychain.close(&acc.entry.account()).await {
            tracing::warn!(error = %e, "could not delete the ended session from the keychain");
        }
        self.reporter.went_offline();
        self.reporter.set_error(Some(e.into()));
        self.publish();
    }

    /// The access token to send and its generation, refreshing first when
    /// less than a fifth of its life is left.
    async fn fresh_token(&self) -> Result<(SecretString, u64)> {
        let (token, generation, stale) = {
            let acc = lock(&self.account);
            let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
            let stale = acc.refresh_in_doubt
                || policy::should_refresh(acc.claims.iat, acc.claims.exp, self.clock.server_now());
            (acc.entry.access_token.clone(), acc.generation, stale)
        };
        if !stale {
            return Ok((token, generation));
        }
        self.refresh(generation).await?;
        self.current_token()
    }

    fn current_token(&self) -> Result<(SecretString, u64)> {
        let acc = lock(&self.account);
        let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
        Ok((acc.entry.access_token.clone(), acc.generation))
    }

    /// One refresh for everyone: callers that saw `seen` wait on the lock,
    /// and whoever comes second finds the work done. It runs on a task of
    /// its own, so a caller that gives up cannot cancel it between the
    /// server's rotation and the keychain write.
    async fn refresh(&self, seen: u64) -> Result<()> {
        let me = self.me.upgrade().ok_or(Error::NotSignedIn)?;
        tokio::spawn(async move { me.refresh_now(seen).await })
            .await
            .map_err(|e| Error::Server(format!("the refresh task failed: {e}")))?
    }

    async fn refresh_now(&self, seen: u64) -> Result<()> {
        self.reporter.ensure_network()?;
        let _guard = self.refresh_lock.lock().await;
        let mut renewal = {
            let acc = lock(&self.account);
            let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
            if acc.generation != seen {
                return Ok(());
            }
            acc.renewal()
        };
        let tokens = self
            .rotate_refresh_token(&renewal.server, &renewal.refresh_token)
            .await?;
        let claims = self
            .verify_refreshed(&mut renewal, tokens.access_token.expose_secret())
            .await?;
        let now = self.now();
        let entry = {
            let mut acc = lock(&self.account);
            let acc = acc.as_mut().ok_or(Error::NotSignedIn)?;
            acc.refreshed(tokens.access_token, renewal, claims, now)?
        };
        self.keychain.persist(&entry).await;
        self.publish();
        Ok(())
    }

    /// Verifies a refreshed access token with the account's keys.
    async fn verify_refreshed(&self, renewal: &mut Renewal, token: &str) -> Result<Claims> {
        let Renewal {
            server,
            issuer,
            keys,
            jwks,
            ..
        } = renewal;
        match self
            .verifier
            .verify(server, issuer, keys, jwks, token, self.clock.server_now())
            .await
        {
            Ok(c) => Ok(c),
            // Not verifiable yet (the new key could not be fetched, or the
            // token does not check out against it): the session stays, on
            // the new refresh token already kept, and the next call tries
            // again.
            Err(e @ Error::Network { .. }) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "a refreshed access token could not be verified; retrying later");
                Err(Error::Server(format!(
                    "a new sign-in token could not be verified yet ({e})"
                )))
            }
        }
    }

    /// Presents the refresh token and keeps its successor. The server spends
    /// the old token as it answers, so the new one reaches the keychain
    /// before anything else can fail; an answer that never came leaves the
    /// refresh in doubt, to be retried at the next contact.
    async fn rotate_refresh_token(
        &self,
        server: &str,
        token: &SecretString,
    ) -> Result<TokenResponse> {
        let answer = api::refresh_grant(self.http.as_ref(), server, token, self.timeouts).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                if e.ends_session() {
                    self.end(&e).await;
                } else if let (Error::Network { .. }, Some(acc)) =
                    (&e, lock(&self.account).as_mut())
                {
                    acc.refresh_in_doubt = true;
                }
                self.lost_network(&e);
                return Err(e);
            }
        };
        self.clock.note(answer.server_time);
        let tokens = answer.value;
        let now = self.now();
        let entry = {
            let mut acc = lock(&self.account);
            let acc = acc.as_mut().ok_or(Error::NotSignedIn)?;
            acc.rotated(&tokens, now)
        };
        // On failure the session goes on from memory (shown), and the
        // server's retry window covers the old token for a minute.
        self.keychain.persist(&entry).await;
        Ok(tokens)
    }

    /// Runs an authenticated call: refresh first if needed, and after a 401
    /// one refresh and one retry. A call that finds the session over ends
    /// it; one that finds no network takes the engine offline.
    pub(crate) async fn authed<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(SecretString) -> Fut,
        Fut: Future<Output = std::result::Result<Answer<T>, ApiError>>,
    {
        self.reporter.ensure_network()?;
        let (token, generation) = self.fresh_token().await?;
        let answer = match call(token).await {
            Err(ApiError::Unauthorized(_)) => {
                self.refresh(generation).await?;
                let (token, _) = self.current_token()?;
                call(token).await
            }
            other => other,
        };
        match answer {
            Ok(a) => {
                self.clock.note(a.server_time);
                Ok(a.value)
            }
            Err(e) => {
                let e = e.into_error();
                if e.ends_session() {
                    self.end(&e).await;
                }
                self.lost_network(&e);
                Err(e)
            }
        }
    }

    /// `GET /v1/auth/session`, the reconnect check; on success the session
    /// is confirmed (and unlocked if the clock had been set back).
    pub(crate) async fn confirm(&self) -> Result<SessionInfo> {
        let server = self.server()?;
        let (http, t) = (self.http.clone(), self.timeouts);
        let info = self
            .authed(|token| {
                let (http, server) = (http.clone(), server.clone());
                async move { api::session(http.as_ref(), &server, &token, t).await }
            })
            .await?;
        let now = self.now();
        let entry = {
            let mut acc = lock(&self.account);
            let acc = acc.as_mut().ok_or(Error::NotSignedIn)?;
            acc.confirmed(now);
            acc.entry.refresh_expires_at = info.refresh_expires_at - self.clock.offset();
            acc.entry.clone()
        };
        self.keychain.persist(&entry).await;
        // An answer that arrives after Work offline was switched on
        // does not make the engine online (nor skip the offline policy).
        self.reporter.came_online();
        self.publish();
        Ok(info)
    }
}

fn check_device_name(name: &str) -> Result<()> {
    if name.chars().count() > MAX_DEVICE_NAME_CHARS {
        return Err(Error::InvalidInput(format!(
            "a device name may be at most {MAX_DEVICE_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidInput(
            "a device name may not hold control characters".into(),
        ));
    }
    Ok(())
}

/// The machine's host name, cut to what the server takes; a fixed name if
/// it has none that reads as text.
fn host_name() -> String {
    let name = gethostname::gethostname();
    let name: String = name
        .to_string_lossy()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DEVICE_NAME_CHARS)
        .collect();
    let name = name.trim();
    if name.is_empty() {
        "Latchkey desktop".into()
    } else {
        name.to_owned()
    }
}
