//! The session: the active account and its state machine (signed out,
//! active, ended by the server), the other accounts signed in on this
//! device and the switch between them, sign-in and sign-out, the
//! single-flight refresh, the authenticated calls made with it, and the
//! session's part of the status, with the offline policy applied.
//!
//! Each account signed in keeps its own keychain entry and local data
//! (notes, outbox, cursor, offline policy); only the active one is in
//! memory, talks to its server and syncs.

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
use crate::status::{AccountItem, SessionState};
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

/// The account a piece of work acts for, taken when the work starts. Every
/// authenticated call it makes checks that this account is still the
/// active one, so that work begun for one account never goes on with
/// another's token after a switch.
#[derive(Clone)]
pub(crate) struct Active {
    session_id: String,
    pub(crate) server: String,
    pub(crate) store: Arc<Mutex<LocalStore>>,
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

    /// The active account, for work that talks to its server (a sync, the
    /// live-updates stream) or upkeeps its notes.
    pub(crate) fn active(&self) -> Result<Active> {
        let acc = lock(&self.account);
        let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
        Ok(Active {
            session_id: acc.entry.session_id.clone(),
            server: acc.entry.server.clone(),
            store: acc.store.clone(),
        })
    }

    /// `of` is still the active account.
    pub(crate) fn is_active(&self, of: &Active) -> bool {
        lock(&self.account)
            .as_ref()
            .is_some_and(|a| a.entry.session_id == of.session_id)
    }

    /// `session_id` is `of`'s own session.
    pub(crate) fn is_current(&self, of: &Active, session_id: &str) -> bool {
        of.session_id == session_id
    }

    /// Runs `f` on `of`'s account if it is still the active one.
    fn with_account<T>(&self, of: &Active, f: impl FnOnce(&mut Account) -> T) -> Result<T> {
        let mut acc = lock(&self.account);
        match acc.as_mut() {
            Some(acc) if acc.entry.session_id == of.session_id => Ok(f(acc)),
            Some(_) => Err(Error::Switched),
            None => Err(Error::NotSignedIn),
        }
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
        let active = match &view {
            SessionView::Active(a) => Some((a.server.as_str(), a.user.username.as_str())),
            _ => None,
        };
        let accounts = self
            .prefs
            .accounts()
            .into_iter()
            .map(|(server, username)| AccountItem {
                active: active == Some((server.as_str(), username.as_str())),
                server,
                username,
            })
            .collect();
        self.reporter.publish(view, accounts);
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
        match self.load_account(&server, &username).await {
            Ok(acc) => {
                self.keychain.open(acc.entry.account());
                *lock(&self.account) = Some(acc);
            }
            Err(e @ Error::NotSignedIn) => tracing::info!(error = %e, "no session to restore"),
            Err(e) => self.reporter.set_error(Some((&e).into())),
        }
    }

    /// Opens a signed-in account's session from its keychain entry and its
    /// local data, with no network. An entry that is gone, damaged or fails
    /// verification takes the account off this device's list (its local
    /// data stays, for the next sign-in).
    async fn load_account(&self, server: &str, username: &str) -> Result<Account> {
        let account = account_name(server, username);
        let unlist = async || {
            self.prefs.remove_account(server, username);
            if let Err(e) = self.prefs.save().await {
                tracing::warn!(error = %e, "could not save engine state");
            }
        };
        let forget = async |e: Error| {
            self.keychain.forget(&account).await;
            unlist().await;
            e
        };
        let raw = match self.keychain.load(&account).await? {
            Some(raw) => raw,
            None => return Err(forget(Error::NotSignedIn).await),
        };
        let failed = Error::StoredSession;
        let entry = match VaultEntry::from_json(&raw) {
            // Signed out offline by an older Latchkey: not a session to use,
            // and its entry stays until the server has revoked it.
            Some(entry) if entry.revoke_pending => {
                unlist().await;
                return Err(Error::NotSignedIn);
            }
            Some(entry) => entry,
            None => {
                let e = failed("the stored sign-in is damaged; sign in again".into());
                return Err(forget(e).await);
            }
        };
        match Account::open(entry, &self.data_dir).await {
            Ok(acc) => Ok(acc),
            Err(Error::Token(e)) => {
                tracing::warn!(error = %e, "the stored access token failed verification");
                let e = failed(format!(
                    "the stored sign-in could not be verified ({e}); sign in again"
                ));
                Err(forget(e).await)
            }
            Err(e) => Err(e),
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
        // Fail before sending the password when there is nowhere safe to keep the session.
        self.keychain
            .load_ready(&account_name(&server, username))
            .await?;
        let (entry, keys, claims) = self.obtain(&server, username, password).await?;
        // Only with the new session in hand (a wrong password or a dead
        // server changes nothing) does it replace the account's older one.
        if let Err(e) = self.replace(&entry).await {
            let _ = api::revoke(
                self.http.as_ref(),
                &entry.server,
                &entry.refresh_token,
                self.timeouts,
            )
            .await;
            return Err(e);
        }
        let store = self.keep(&entry).await?;
        self.install(Account::new(entry, keys, claims, store)).await
    }

    /// A new session of `new`'s account replaces any other session of it
    /// on this device: the active one signs out, one put away is revoked
    /// (or kept to revoke later, offline). Other accounts stay signed in.
    async fn replace(&self, new: &VaultEntry) -> Result<()> {
        let name = new.account();
        let active_is_it = lock(&self.account)
            .as_ref()
            .is_some_and(|a| a.entry.account() == name);
        if active_is_it {
            return self.sign_out(false).await;
        }
        let old = self.keychain.load(&name).await?;
        let Some(old) = old.as_deref().and_then(VaultEntry::from_json) else {
            return Ok(());
        };
        if old.revoke_pending {
            // Signed out offline by an older Latchkey, which kept the entry
            // to revoke under the account's own name: the new session is
            // about to take that name, so the old one moves to its own.
            self.revocations.park(&old).await
        } else {
            self.revocations.revoke_or_park(&old).await
        }
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

    /// Keeps a new session: its entry in the keychain and its user's notes
    /// opened. If either fails, the server-side session is revoked.
    async fn keep(&self, entry: &VaultEntry) -> Result<LocalStore> {
        let revoke = || {
            api::revoke(
                self.http.as_ref(),
                &entry.server,
                &entry.refresh_token,
                self.timeouts,
            )
        };
        if let Err(e) = self.keychain.store(&entry.account(), entry).await {
            // No safe home for the refresh token: end the session we just made.
            let _ = revoke().await;
            return Err(e);
        }
        match open_store(&self.data_dir, entry).await {
            Ok(store) => Ok(store),
            Err(e) => {
                let _ = revoke().await;
                self.keychain.forget(&entry.account()).await;
                Err(e)
            }
        }
    }

    /// A new session takes over: online, no error, remembered for the next
    /// start. The account that was active stays signed in.
    async fn install(&self, acc: Account) -> Result<()> {
        self.take_over(acc).await?;
        // Work offline may have been switched on meanwhile.
        self.reporter.came_online();
        self.publish();
        self.reporter.wake(Wake::Edited);
        Ok(())
    }

    /// `acc` becomes the active account, in one step (no moment when nobody
    /// seems signed in), and the one it replaces is put away: its latest
    /// state written to its keychain entry. Holds the refresh lock, so that
    /// no refresh of the old account is between the server and the
    /// keychain meanwhile.
    async fn take_over(&self, acc: Account) -> Result<()> {
        let _refreshing = self.refresh_lock.lock().await;
        let name = acc.entry.account();
        let (server, username) = (acc.entry.server.clone(), acc.entry.user.username.clone());
        let old = {
            let mut account = lock(&self.account);
            let old = account.replace(acc);
            *lock(&self.ended) = None;
            old
        };
        if let Some(old) = old {
            // The gate is still the old account's: this write is its last.
            if let Err(e) = self.keychain.write(&old.entry).await {
                tracing::warn!(error = %e, "could not write the account put away to the keychain");
            }
        }
        self.keychain.open(name);
        self.keychain.clear_error();
        self.reporter.set_error(None);
        self.reporter.set_indexing(None);
        self.prefs.add_account(server, username);
        self.prefs.save().await
    }

    /// Makes another account signed in on this device the active one, from
    /// its keychain entry and local data: no network needed, so it works
    /// offline (the account's own offline policy then applies). The
    /// account that was active stays signed in.
    pub(crate) async fn switch(&self, server: &str, username: &str) -> Result<()> {
        let listed = self
            .prefs
            .accounts()
            .iter()
            .any(|(s, u)| (s.as_str(), u.as_str()) == (server, username));
        if !listed {
            return Err(Error::InvalidInput(
                "that account is not signed in on this device".into(),
            ));
        }
        let name = account_name(server, username);
        let old_server = {
            let acc = lock(&self.account);
            match acc.as_ref() {
                Some(a) if a.entry.account() == name => return Ok(()),
                Some(a) => Some(a.entry.server.clone()),
                None => None,
            }
        };
        let acc = match self.load_account(server, username).await {
            Ok(acc) => acc,
            Err(e) => {
                // It may have left the list.
                self.publish();
                return Err(match e {
                    Error::NotSignedIn => Error::InvalidInput(format!(
                        "{username} is no longer signed in on this device; sign in again"
                    )),
                    e => e,
                });
            }
        };
        self.take_over(acc).await?;
        // Whether the server is reachable was learnt of the other account's
        // server: this one is checked afresh.
        if old_server.as_deref() != Some(server) {
            self.reporter.went_offline();
        }
        self.publish();
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
        self.forget_account(&acc.entry).await;
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

    /// `entry`'s account is not signed in on this device any more (its local
    /// data stays until wiped).
    async fn forget_account(&self, entry: &VaultEntry) {
        self.prefs
            .remove_account(&entry.server, &entry.user.username);
        if let Err(e) = self.prefs.save().await {
            tracing::warn!(error = %e, "could not save engine state");
        }
    }

    /// The live-updates stream said the session is over.
    pub(crate) async fn ended_by_server(&self, of: &Active, reason: Reason) {
        let e = match reason {
            Reason::Expired => Error::SessionExpired,
            _ => Error::SessionRevoked,
        };
        self.end(of, &e).await;
    }

    /// The server ended `of`'s session: keep the local data, forget the
    /// tokens. Nothing happens if another account is active by now.
    async fn end(&self, of: &Active, e: &Error) {
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
            if account.as_ref().map(|a| &a.entry.session_id) != Some(&of.session_id) {
                return;
            }
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
        self.forget_account(&acc.entry).await;
        self.reporter.went_offline();
        self.reporter.set_error(Some(e.into()));
        self.publish();
    }

    /// The access token to send and its generation, refreshing first when
    /// less than a fifth of its life is left.
    async fn fresh_token(&self, of: &Active) -> Result<(SecretString, u64)> {
        let server_now = self.clock.server_now();
        let (token, generation, stale) = self.with_account(of, |acc| {
            let stale = acc.refresh_in_doubt
                || policy::should_refresh(acc.claims.iat, acc.claims.exp, server_now);
            (acc.entry.access_token.clone(), acc.generation, stale)
        })?;
        if !stale {
            return Ok((token, generation));
        }
        self.refresh(of, generation).await?;
        self.current_token(of)
    }

    fn current_token(&self, of: &Active) -> Result<(SecretString, u64)> {
        self.with_account(of, |acc| (acc.entry.access_token.clone(), acc.generation))
    }

    /// One refresh for everyone: callers that saw `seen` wait on the lock,
    /// and whoever comes second finds the work done. It runs on a task of
    /// its own, so a caller that gives up cannot cancel it between the
    /// server's rotation and the keychain write.
    async fn refresh(&self, of: &Active, seen: u64) -> Result<()> {
        let me = self.me.upgrade().ok_or(Error::NotSignedIn)?;
        let of = of.clone();
        tokio::spawn(async move { me.refresh_now(&of, seen).await })
            .await
            .map_err(|e| Error::Server(format!("the refresh task failed: {e}")))?
    }

    /// Holds the refresh lock throughout: an account switch, which takes
    /// it too, never comes between the server's rotation and the keychain.
    async fn refresh_now(&self, of: &Active, seen: u64) -> Result<()> {
        self.reporter.ensure_network()?;
        let _guard = self.refresh_lock.lock().await;
        let Some(mut renewal) =
            self.with_account(of, |acc| (acc.generation == seen).then(|| acc.renewal()))?
        else {
            return Ok(());
        };
        let tokens = self
            .rotate_refresh_token(of, &renewal.server, &renewal.refresh_token)
            .await?;
        let claims = self
            .verify_refreshed(&mut renewal, tokens.access_token.expose_secret())
            .await?;
        let now = self.now();
        let entry = self.with_account(of, |acc| {
            acc.refreshed(tokens.access_token, renewal, claims, now)
        })??;
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
        of: &Active,
        server: &str,
        token: &SecretString,
    ) -> Result<TokenResponse> {
        let answer = api::refresh_grant(self.http.as_ref(), server, token, self.timeouts).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                if e.ends_session() {
                    self.end(of, &e).await;
                } else if matches!(e, Error::Network { .. }) {
                    let _ = self.with_account(of, |acc| acc.refresh_in_doubt = true);
                }
                self.lost_network(&e);
                return Err(e);
            }
        };
        self.clock.note(answer.server_time);
        let tokens = answer.value;
        let now = self.now();
        let entry = self.with_account(of, |acc| acc.rotated(&tokens, now))?;
        // On failure the session goes on from memory (shown), and the
        // server's retry window covers the old token for a minute.
        self.keychain.persist(&entry).await;
        Ok(tokens)
    }

    /// Runs an authenticated call for `of`'s account ([`Error::Switched`]
    /// if another is active by now): refresh first if needed, and after a
    /// 401 one refresh and one retry. A call that finds the session over
    /// ends it; one that finds no network takes the engine offline.
    pub(crate) async fn authed<T, F, Fut>(&self, of: &Active, call: F) -> Result<T>
    where
        F: Fn(SecretString) -> Fut,
        Fut: Future<Output = std::result::Result<Answer<T>, ApiError>>,
    {
        self.reporter.ensure_network()?;
        let (token, generation) = self.fresh_token(of).await?;
        let answer = match call(token).await {
            Err(ApiError::Unauthorized(_)) => {
                self.refresh(of, generation).await?;
                let (token, _) = self.current_token(of)?;
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
                    self.end(of, &e).await;
                }
                self.lost_network(&e);
                Err(e)
            }
        }
    }

    /// `GET /v1/auth/session`, the reconnect check; on success the session
    /// is confirmed (and unlocked if the clock had been set back).
    pub(crate) async fn confirm(&self, of: &Active) -> Result<SessionInfo> {
        let (http, t) = (self.http.clone(), self.timeouts);
        let info = self
            .authed(of, |token| {
                let (http, server) = (http.clone(), of.server.clone());
                async move { api::session(http.as_ref(), &server, &token, t).await }
            })
            .await?;
        let now = self.now();
        let offset = self.clock.offset();
        let entry = self.with_account(of, |acc| {
            acc.confirmed(now);
            acc.entry.refresh_expires_at = info.refresh_expires_at - offset;
            acc.entry.clone()
        })?;
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
