//! The engine: one signed-in account at a time, its session state machine,
//! the single-flight refresh, connectivity, and reconnect sync. The app
//! builds one [`Engine`] and calls it; everything it decides is here.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey_protocol::{
    Claims, Jwks, KeySet, Op, PullResponse, PushRequest, PushResponse, TokenResponse, UserInfo,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::api::{self, Answer, ApiError, Timeouts};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::http::{Http, normalize_server_url};
use crate::policy::{self, Verdict};
use crate::status::{SessionState, Status, StatusError};
use crate::store::{LocalStore, Note, SYNC_OK, create_private_dir};
use crate::vault::{Vault, VaultEntry, account_name};

/// At most this many ops per push.
pub const PUSH_BATCH: usize = 500;
/// The server's largest page: fewer round trips for a large pull.
const PULL_PAGE: u32 = 1000;
/// latest_seen_time is written back to the keychain at most this often.
const PERSIST_SEEN_EVERY_SECS: i64 = 60;

/// How the engine behaves; [`Config::new`] gives the defaults of DESIGN.md.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where local data lives: one database per user below it.
    pub data_dir: PathBuf,
    /// How long a session is honoured offline since the server last confirmed it.
    pub offline_grace: Duration,
    /// While online, how often `/healthz` is checked.
    pub heartbeat: Duration,
    /// While online, how often a full sync runs.
    pub sync_interval: Duration,
    /// A sync runs this long after the last edit (while online).
    pub edit_debounce: Duration,
    /// Offline probes: from `backoff_min` doubling to `backoff_max`, ±20%.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub timeouts: Timeouts,
    /// Clock leeway for `exp`/`nbf`, seconds (at most 60).
    pub leeway: u64,
    /// Start with "Work offline" on.
    pub work_offline: bool,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            offline_grace: Duration::from_secs(7 * 86_400),
            heartbeat: Duration::from_secs(3),
            sync_interval: Duration::from_secs(30),
            edit_debounce: Duration::from_millis(500),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15),
            timeouts: Timeouts {
                request: Duration::from_secs(10),
                probe: Duration::from_secs(2),
                sync: Duration::from_secs(60),
            },
            leeway: 30,
            work_offline: false,
        }
    }
}

/// Non-secret engine state, kept in `<data_dir>/engine.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Prefs {
    /// The account restored at start: (server, username).
    last_account: Option<(String, String)>,
    /// Accounts signed out while offline whose refresh token still awaits
    /// revocation on the server.
    #[serde(default)]
    pending_revocations: Vec<String>,
}

/// The signed-in account.
struct Account {
    entry: VaultEntry,
    keys: KeySet,
    claims: Claims,
    /// Bumped by every refresh: lets concurrent callers share one.
    generation: u64,
    /// latest_seen_time as last written to the keychain.
    persisted_seen: i64,
    /// A monotonic reading taken when latest_seen_time was `.1`: real time
    /// passes even if the wall clock is held back.
    seen_mono: (std::time::Instant, i64),
    /// A refresh was sent and its answer never came: the server may have
    /// spent the refresh token. The next contact refreshes at once, inside
    /// the server's 60 s retry window, whatever the access token's age.
    refresh_in_doubt: bool,
    store: Arc<Mutex<LocalStore>>,
}

impl Account {
    fn new(entry: VaultEntry, keys: KeySet, claims: Claims, store: LocalStore) -> Self {
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
    fn confirmed(&mut self, now: i64) {
        self.entry.last_confirmed_at = now;
        self.entry.latest_seen_time = now;
        self.entry.clock_locked = false;
        self.seen_mono = (std::time::Instant::now(), now);
        self.persisted_seen = now;
    }
}

/// What the status shows besides the account.
#[derive(Default)]
struct Flags {
    online: bool,
    work_offline: bool,
    last_error: Option<StatusError>,
    /// The keychain refused a write of the active session (shown until a
    /// write works again): the session goes on from memory.
    keychain_error: Option<StatusError>,
    /// The server ended the session: (state, user, server).
    ended: Option<(SessionState, UserInfo, String)>,
    /// The ended session's notes: they stay open for saves (the user may be
    /// typing when the session ends), which sync after the same user signs
    /// in again.
    ended_store: Option<Arc<Mutex<LocalStore>>>,
}

enum Wake {
    /// Something changed (sign-in, Work offline on, a failed request).
    Changed,
    /// Work offline turned off: try the network at once.
    Resume,
    /// A note was saved: sync soon, debounced.
    Edited,
}

struct Inner {
    config: Config,
    vault: Arc<dyn Vault>,
    http: Arc<dyn Http>,
    clock: Arc<dyn Clock>,
    status: watch::Sender<Status>,
    account: Mutex<Option<Account>>,
    flags: Mutex<Flags>,
    prefs: Mutex<Prefs>,
    refresh_lock: tokio::sync::Mutex<()>,
    sync_lock: tokio::sync::Mutex<()>,
    /// Server time minus local time, from the `Date` header.
    clock_offset: AtomicI64,
    /// Bumped whenever a sync changes notes ([`Status::notes_changed`]).
    notes_changed: std::sync::atomic::AtomicU64,
    wake: mpsc::UnboundedSender<Wake>,
    /// The keychain account whose entry may be written: the active one.
    /// Every write of the active entry checks it under this lock, so a late
    /// write can never bring back an entry that sign-out or the end of the
    /// session has deleted.
    vault_gate: Arc<Mutex<Option<String>>>,
    /// Lets work that must not be cancelled (a refresh) run on its own task.
    me: std::sync::Weak<Inner>,
}

/// The engine. Cheap to clone; the background loop stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    _loop: Arc<LoopGuard>,
}

struct LoopGuard(tokio::task::JoinHandle<()>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Push answers being applied, one after another, behind the pushes.
type Applying<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

fn nothing_to_apply<'a>() -> Applying<'a> {
    Box::pin(std::future::ready(Ok(())))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("a background task failed: {e}")))?
}

impl Engine {
    /// Builds the engine and restores the last session from the keychain and
    /// local data, with no network needed. Must run inside a tokio runtime.
    pub async fn start(
        config: Config,
        vault: Arc<dyn Vault>,
        http: Arc<dyn Http>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine> {
        create_private_dir(&config.data_dir)?;
        let prefs = load_prefs(&config.data_dir);
        let (wake, rx) = mpsc::unbounded_channel();
        let flags = Flags {
            work_offline: config.work_offline,
            ..Flags::default()
        };
        let inner = Arc::new_cyclic(|me| Inner {
            config,
            vault,
            http,
            clock,
            status: watch::Sender::new(Status::signed_out()),
            account: Mutex::new(None),
            flags: Mutex::new(flags),
            prefs: Mutex::new(prefs),
            refresh_lock: tokio::sync::Mutex::new(()),
            sync_lock: tokio::sync::Mutex::new(()),
            clock_offset: AtomicI64::new(0),
            notes_changed: Default::default(),
            wake,
            vault_gate: Arc::default(),
            me: me.clone(),
        });
        inner.restore().await;
        inner.publish();
        let task = tokio::spawn(run_loop(Arc::downgrade(&inner), rx));
        Ok(Engine {
            inner,
            _loop: Arc::new(LoopGuard(task)),
        })
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// Follows every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// Signs in with a password. The tokens go to the keychain only; the
    /// issuer is pinned from the server's metadata.
    pub async fn sign_in(
        &self,
        server_url: &str,
        username: &str,
        password: &str,
    ) -> Result<Status> {
        let result = self.inner.sign_in(server_url, username, password).await;
        self.inner.record(&result);
        result.map(|()| self.status())
    }

    /// Ends the session in the app at once; revokes it on the server, or,
    /// offline, keeps the refresh token (marked) until it can. `wipe` also
    /// deletes the user's local notes and unsynced changes.
    pub async fn sign_out(&self, wipe: bool) -> Result<Status> {
        let result = self.inner.sign_out(wipe).await;
        self.inner.record(&result);
        result.map(|()| self.status())
    }

    /// Turns "Work offline" on (no network traffic at all) or off.
    pub fn set_work_offline(&self, on: bool) {
        {
            let mut f = lock(&self.inner.flags);
            f.work_offline = on;
            if on {
                f.online = false;
            }
        }
        self.inner.publish();
        let _ = self
            .inner
            .wake
            .send(if on { Wake::Changed } else { Wake::Resume });
    }

    /// Syncs now: confirm the session, push, pull. Like the engine's own
    /// syncs, it is cut short when the heartbeat finds the server gone.
    pub async fn sync_now(&self) -> Result<Status> {
        self.inner.ensure_network()?;
        sync_with_heartbeat(&self.inner)
            .await
            .map(|()| self.status())
    }

    /// `GET /v1/auth/session` with the usual refresh rules: the reconnect
    /// check, also usable on its own.
    pub async fn confirm_session(&self) -> Result<latchkey_protocol::SessionInfo> {
        let r = self.inner.confirm().await;
        self.inner.record(&r);
        r
    }

    pub async fn list_notes(&self) -> Result<Vec<Note>> {
        let store = self.inner.notes_store()?;
        blocking(move || lock(&store).list_notes()).await
    }

    pub async fn get_note(&self, id: Uuid) -> Result<Note> {
        let store = self.inner.notes_store()?;
        blocking(move || lock(&store).get_note(id)).await
    }

    /// Saves a note (a new one when `id` is `None`). When this returns the
    /// note and its queued change are on disk.
    ///
    /// `base_version` is the [`Note::version`] the editor loaded (`None`:
    /// save over whatever the note holds). If the note changed since (a pull
    /// brought another device's edit), the other text stays in the note and
    /// this one is saved as a conflict copy, which is returned: its id is
    /// then not `id`, and the editor goes on in the copy.
    pub async fn save_note(
        &self,
        id: Option<Uuid>,
        base_version: Option<i64>,
        title: String,
        body: String,
    ) -> Result<Note> {
        let store = self.inner.notes_store()?;
        let now = self.inner.clock.now();
        // Time-ordered ids (as the outbox's op ids): the server's and the
        // local store's indexes then grow at one end instead of touching a
        // random page per note: a batched push costs the server a third of
        // the time (BENCHMARKS.md).
        let id = id.unwrap_or_else(Uuid::now_v7);
        let result =
            blocking(move || lock(&store).save_note(id, base_version, &title, &body, now)).await;
        self.inner.after_edit(&result);
        result
    }

    pub async fn delete_note(&self, id: Uuid) -> Result<()> {
        let store = self.inner.notes_store()?;
        let now = self.inner.clock.now();
        let result = blocking(move || lock(&store).delete_note(id, now)).await;
        self.inner.after_edit(&result);
        result
    }
}

fn prefs_path(dir: &std::path::Path) -> PathBuf {
    dir.join("engine.json")
}

fn load_prefs(dir: &std::path::Path) -> Prefs {
    std::fs::read(prefs_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_prefs(dir: &std::path::Path, prefs: &Prefs) -> Result<()> {
    let tmp = dir.join("engine.json.tmp");
    let json = serde_json::to_vec_pretty(prefs).map_err(|e| Error::Storage(e.to_string()))?;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, prefs_path(dir))?;
    Ok(())
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
    if json.len() > crate::vault::MAX_ENTRY_CHARS {
        tracing::warn!(
            len = json.len(),
            "the keychain entry is larger than planned"
        );
    }
    vault.store(&entry.account(), &json)
}

/// The folder of one user's local data.
pub fn user_dir(data_dir: &std::path::Path, server: &str, user_id: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{server}\n{user_id}").as_bytes());
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    data_dir.join("users").join(name)
}

/// The key of `jwks` that verifies a token signed with `kid`, alone: the
/// keychain entry stays small.
fn keys_for(jwks: &Jwks, kid: &str) -> Jwks {
    Jwks {
        keys: jwks.keys.iter().filter(|k| k.kid == kid).cloned().collect(),
    }
}

impl Inner {
    fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The server's idea of now, for `exp`/`nbf`.
    fn server_now(&self) -> i64 {
        self.clock.now() + self.clock_offset.load(Ordering::Relaxed)
    }

    fn note_server_time(&self, server_time: Option<i64>) {
        if let Some(t) = server_time {
            let offset = t - self.clock.now();
            // The Date header has a one-second resolution.
            self.clock_offset.store(
                if offset.abs() <= 2 { 0 } else { offset },
                Ordering::Relaxed,
            );
        }
    }

    /// A sync changed `n` notes: tell the UI (an apply that changed none
    /// still moves the pending count).
    fn notes_changed_by(&self, n: usize) {
        if n > 0 {
            self.notes_changed.fetch_add(1, Ordering::Relaxed);
        }
        self.publish();
    }

    /// Keeps the outcome of a user action as the status' last error.
    fn record<T>(&self, result: &Result<T>) {
        if let Err(e) = result {
            lock(&self.flags).last_error = Some(e.into());
            self.publish();
        }
    }

    fn notes_store(&self) -> Result<Arc<Mutex<LocalStore>>> {
        let acc = lock(&self.account);
        let Some(acc) = acc.as_ref() else {
            return lock(&self.flags)
                .ended_store
                .clone()
                .ok_or(Error::NotSignedIn);
        };
        let online = lock(&self.flags).online;
        if !online {
            let mut entry = acc.entry.clone();
            if let (Verdict::Locked(reason), _) = policy::evaluate(
                &mut entry,
                self.now(),
                acc.floor(),
                self.config.offline_grace,
            ) {
                return Err(Error::Locked(reason.sentence().into()));
            }
        }
        Ok(acc.store.clone())
    }

    fn after_edit<T>(&self, result: &Result<T>) {
        match result {
            Ok(_) => {
                self.publish();
                let _ = self.wake.send(Wake::Edited);
            }
            Err(e) => self.record::<()>(&Err(e.clone())),
        }
    }

    /// Builds the status from the account and flags, applying the offline
    /// policy, and publishes it if anything changed.
    fn publish(&self) {
        let mut persist = None;
        let status = {
            let mut acc_guard = lock(&self.account);
            let flags = lock(&self.flags);
            let mut st = Status::signed_out();
            st.work_offline = flags.work_offline;
            st.notes_changed = self.notes_changed.load(Ordering::Relaxed);
            st.last_error = flags.last_error.clone();
            match acc_guard.as_mut() {
                None => {
                    if let Some((state, user, server)) = &flags.ended {
                        st.state = *state;
                        st.user = Some(user.clone());
                        st.server = Some(server.clone());
                    }
                }
                Some(acc) => {
                    if flags.keychain_error.is_some() {
                        st.last_error = flags.keychain_error.clone();
                    }
                    st.user = Some(acc.entry.user.clone());
                    st.server = Some(acc.entry.server.clone());
                    st.access_expires_at = Some(acc.claims.exp);
                    let floor = acc.floor();
                    let (verdict, changed) = policy::evaluate(
                        &mut acc.entry,
                        self.now(),
                        floor,
                        self.config.offline_grace,
                    );
                    if changed
                        && (acc.entry.clock_locked
                            || acc
                                .entry
                                .latest_seen_time
                                .saturating_sub(acc.persisted_seen)
                                >= PERSIST_SEEN_EVERY_SECS)
                    {
                        acc.persisted_seen = acc.entry.latest_seen_time;
                        persist = Some(acc.entry.clone());
                    }
                    st.online = flags.online && !flags.work_offline;
                    st.state = if st.online {
                        SessionState::Online
                    } else {
                        SessionState::Offline
                    };
                    match verdict {
                        Verdict::Usable { until } => st.offline_until = Some(until),
                        Verdict::Locked(reason) if !st.online => {
                            st.state = SessionState::Locked;
                            st.locked_reason = Some(reason.sentence().into());
                        }
                        Verdict::Locked(_) => {}
                    }
                    if let Ok(store) = acc.store.try_lock() {
                        st.pending = store.pending_count().unwrap_or(0);
                        let record = store.last_sync().unwrap_or_default();
                        st.last_sync_at = record.ok_at;
                        if let Some((at, outcome)) = record.attempt {
                            st.last_sync_attempt_at = Some(at);
                            st.last_sync_result = Some(outcome);
                        }
                    } else {
                        let prev = self.status.borrow();
                        st.pending = prev.pending;
                        st.last_sync_at = prev.last_sync_at;
                        st.last_sync_attempt_at = prev.last_sync_attempt_at;
                        st.last_sync_result = prev.last_sync_result.clone();
                    }
                }
            }
            st
        };
        if let Some(entry) = persist {
            let (vault, gate) = (self.vault.clone(), self.vault_gate.clone());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = write_if_active(&*vault, &gate, &entry) {
                    tracing::warn!(error = %e, "could not write the session to the keychain");
                }
            });
        }
        self.status.send_if_modified(|old| {
            if *old == status {
                false
            } else {
                *old = status;
                true
            }
        });
    }

    /// Restores the last account from the keychain and local data: no
    /// network needed.
    async fn restore(&self) {
        let last = lock(&self.prefs).last_account.clone();
        let Some((server, username)) = last else {
            return;
        };
        let vault = self.vault.clone();
        let account = account_name(&server, &username);
        let loaded = blocking(move || vault.load(&account)).await;
        let raw = match loaded {
            Ok(Some(raw)) => raw,
            Ok(None) => return,
            Err(e) => {
                lock(&self.flags).last_error = Some((&e).into());
                return;
            }
        };
        let failed = |message: &str| StatusError {
            code: "token_invalid".into(),
            message: message.into(),
        };
        let Some(entry) = VaultEntry::from_json(&raw) else {
            lock(&self.flags).last_error =
                Some(failed("the stored sign-in is damaged; sign in again"));
            self.forget_entry(&server, &username).await;
            return;
        };
        if entry.revoke_pending {
            return;
        }
        match self.open_account(entry).await {
            Ok(acc) => {
                *lock(&self.vault_gate) = Some(acc.entry.account());
                *lock(&self.account) = Some(acc);
            }
            Err(Error::Token(e)) => {
                tracing::warn!(error = %e, "the stored access token failed verification");
                lock(&self.flags).last_error = Some(failed(&format!(
                    "the stored sign-in could not be verified ({e}); sign in again"
                )));
                self.forget_entry(&server, &username).await;
            }
            Err(e) => lock(&self.flags).last_error = Some((&e).into()),
        }
    }

    async fn forget_entry(&self, server: &str, username: &str) {
        let vault = self.vault.clone();
        let account = account_name(server, username);
        if let Err(e) = blocking(move || vault.delete(&account)).await {
            tracing::warn!(error = %e, "could not delete a keychain entry");
        }
    }

    /// Verifies a stored entry (signature, issuer, audience, that the token
    /// is this user's and this session's; not time) and opens the user's
    /// local data.
    async fn open_account(&self, entry: VaultEntry) -> Result<Account> {
        let (keys, claims) = entry.verify()?;
        let path = user_dir(&self.config.data_dir, &entry.server, &entry.user.id).join("notes.db");
        let store = blocking(move || LocalStore::open(&path)).await?;
        Ok(Account::new(entry, keys, claims, store))
    }

    /// Writes the active account's entry (nothing if it is no longer active).
    async fn write_entry(&self, entry: &VaultEntry) -> Result<()> {
        let (vault, gate, entry) = (self.vault.clone(), self.vault_gate.clone(), entry.clone());
        blocking(move || write_if_active(&*vault, &gate, &entry)).await
    }

    /// Writes the active session's entry mid-session. A failure does not end
    /// the session, which goes on from memory, but is shown until a write
    /// works again.
    async fn persist_entry(&self, entry: &VaultEntry) {
        let result = self.write_entry(entry).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "could not write the session to the keychain");
        }
        lock(&self.flags).keychain_error = result.err().map(|e| {
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

    /// Closes the gate (no more writes of the active entry), then deletes
    /// the entry or, with `keep`, rewrites it as given.
    async fn close_entry(&self, account: String, keep: Option<VaultEntry>) -> Result<()> {
        let (vault, gate) = (self.vault.clone(), self.vault_gate.clone());
        blocking(move || {
            let mut gate = lock(&gate);
            *gate = None;
            match keep {
                Some(entry) => vault.store(&account, &entry.to_json()),
                None => vault.delete(&account),
            }
        })
        .await
    }

    fn timeouts(&self) -> Timeouts {
        self.config.timeouts
    }

    fn ensure_network(&self) -> Result<()> {
        if lock(&self.flags).work_offline {
            Err(Error::WorkingOffline)
        } else {
            Ok(())
        }
    }

    /// Verifies a fresh token response's access token, fetching the JWKS
    /// once if it names an unknown key, and returns it with its claims and
    /// the key that signed it.
    async fn verify_new_token(
        &self,
        server: &str,
        issuer: &str,
        keys: &mut KeySet,
        jwks: &mut Jwks,
        token: &str,
    ) -> Result<Claims> {
        let kid = KeySet::token_kid(token).unwrap_or_default();
        if !keys.contains(&kid) {
            *jwks = api::jwks(self.http.as_ref(), server, self.timeouts()).await?;
            *keys = KeySet::from_jwks(jwks)
                .map_err(|_| Error::Server("the server published a malformed key".into()))?;
        }
        let claims = keys.verify(token, issuer, self.server_now(), self.config.leeway)?;
        *jwks = keys_for(jwks, &kid);
        Ok(claims)
    }

    async fn sign_in(&self, server_url: &str, username: &str, password: &str) -> Result<()> {
        self.ensure_network()?;
        let server = normalize_server_url(server_url)?;
        let username = username.trim();
        if username.is_empty() || password.is_empty() {
            return Err(Error::InvalidInput(
                "enter a username and a password".into(),
            ));
        }
        // Fail before sending the password when there is nowhere safe to keep the session.
        let vault = self.vault.clone();
        let account = account_name(&server, username);
        let existing = blocking(move || {
            let existing = vault.load(&account)?;
            vault.ready_to_store()?;
            Ok(existing)
        })
        .await?;
        if let Some(old) = existing.as_deref().and_then(VaultEntry::from_json)
            && old.revoke_pending
        {
            // Signed out offline by an older Latchkey, which kept the entry
            // to revoke under the account's own name: the new session is
            // about to take that name, so the old one moves to its own.
            self.park_revocation(&old).await?;
        }
        if self.has_session() {
            // One account at a time: the current one signs out first.
            self.sign_out(false).await?;
        }
        let t = self.timeouts();
        let http = self.http.as_ref();
        let meta = api::metadata(http, &server, t)
            .await
            .inspect_err(|e| self.on_network_error(e))?;
        let mut jwks = api::jwks(http, &server, t).await?;
        let mut keys = KeySet::from_jwks(&jwks)
            .map_err(|_| Error::Server("the server published a malformed key".into()))?;
        let answer = api::password_grant(http, &server, username, password, t).await?;
        self.note_server_time(answer.server_time);
        let tokens = answer.value;
        let claims = match self
            .verify_new_token(
                &server,
                &meta.issuer,
                &mut keys,
                &mut jwks,
                &tokens.access_token,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = api::revoke(http, &server, &tokens.refresh_token, t).await;
                return Err(e);
            }
        };
        let now = self.now();
        let entry = VaultEntry {
            server: server.clone(),
            issuer: meta.issuer,
            user: tokens.user.clone(),
            session_id: tokens.session_id.clone(),
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
            refresh_expires_at: now + tokens.refresh_expires_in as i64,
            jwks,
            latest_seen_time: now,
            last_confirmed_at: now,
            clock_locked: false,
            revoke_pending: false,
        };
        *lock(&self.vault_gate) = Some(entry.account());
        if let Err(e) = self.write_entry(&entry).await {
            *lock(&self.vault_gate) = None;
            // No safe home for the refresh token: end the session we just made.
            let _ = api::revoke(http, &server, &tokens.refresh_token, t).await;
            return Err(e);
        }
        let path = user_dir(&self.config.data_dir, &server, &entry.user.id).join("notes.db");
        let store = match blocking(move || LocalStore::open(&path)).await {
            Ok(s) => s,
            Err(e) => {
                let _ = api::revoke(http, &server, &tokens.refresh_token, t).await;
                let _ = self.close_entry(entry.account(), None).await;
                return Err(e);
            }
        };
        *lock(&self.account) = Some(Account::new(entry, keys, claims, store));
        {
            let mut f = lock(&self.flags);
            // Work offline may have been switched on meanwhile.
            f.online = !f.work_offline;
            f.ended = None;
            f.ended_store = None;
            f.last_error = None;
            f.keychain_error = None;
        }
        {
            let mut prefs = lock(&self.prefs);
            prefs.last_account = Some((server, tokens.user.username.clone()));
            save_prefs(&self.config.data_dir, &prefs)?;
        }
        self.publish();
        let _ = self.wake.send(Wake::Edited);
        Ok(())
    }

    async fn sign_out(&self, wipe: bool) -> Result<()> {
        let Some(acc) = lock(&self.account).take() else {
            let mut f = lock(&self.flags);
            f.ended = None;
            f.ended_store = None;
            drop(f);
            self.publish();
            return Ok(());
        };
        {
            let mut f = lock(&self.flags);
            f.online = false;
            f.ended = None;
            f.last_error = None;
        }
        self.publish();
        let entry = acc.entry.clone();
        let user_data = user_dir(&self.config.data_dir, &entry.server, &entry.user.id);
        drop(acc);
        let revoked = if self.ensure_network().is_ok() {
            api::revoke(
                self.http.as_ref(),
                &entry.server,
                &entry.refresh_token,
                self.timeouts(),
            )
            .await
            .is_ok()
        } else {
            false
        };
        let parked = if revoked {
            Ok(())
        } else {
            let parked = self.park_revocation(&entry).await;
            // Now that it is listed: the loop retries it.
            let _ = self.wake.send(Wake::Changed);
            parked
        };
        // The session leaves the keychain's account entry either way: it
        // must not come back at the next start.
        self.close_entry(entry.account(), None).await?;
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

    /// Keeps a signed-out session's refresh token until the server has
    /// revoked it: in a keychain entry of its own (per server and session,
    /// so a new sign-in of the same user never overwrites it), listed in the
    /// prefs, tried on every contact with a server until one confirms.
    async fn park_revocation(&self, entry: &VaultEntry) -> Result<()> {
        let key = format!("{}#revoke:{}", entry.account(), entry.session_id);
        let mut pending = entry.clone();
        pending.revoke_pending = true;
        let (vault, k) = (self.vault.clone(), key.clone());
        blocking(move || vault.store(&k, &pending.to_json())).await?;
        let mut prefs = lock(&self.prefs);
        if !prefs.pending_revocations.contains(&key) {
            prefs.pending_revocations.push(key);
        }
        save_prefs(&self.config.data_dir, &prefs)
    }

    /// Revokes sessions signed out while offline; true when none are left.
    async fn revoke_pending(&self) -> bool {
        let pending = lock(&self.prefs).pending_revocations.clone();
        if pending.is_empty() || self.ensure_network().is_err() {
            return pending.is_empty();
        }
        let mut done = Vec::new();
        for account in &pending {
            let vault = self.vault.clone();
            let a = account.clone();
            let entry = match blocking(move || vault.load(&a)).await {
                Ok(Some(raw)) => VaultEntry::from_json(&raw),
                Ok(None) => None,
                Err(_) => continue,
            };
            let Some(entry) = entry.filter(|e| e.revoke_pending) else {
                done.push(account.clone());
                continue;
            };
            match api::revoke(
                self.http.as_ref(),
                &entry.server,
                &entry.refresh_token,
                self.timeouts(),
            )
            .await
            {
                Ok(()) | Err(Error::SessionExpired | Error::SessionRevoked) => {
                    let (vault, a) = (self.vault.clone(), account.clone());
                    match blocking(move || vault.delete(&a)).await {
                        Ok(()) => done.push(account.clone()),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not delete a revoked session from the keychain")
                        }
                    }
                }
                Err(_) => {}
            }
        }
        let mut prefs = lock(&self.prefs);
        prefs.pending_revocations.retain(|a| !done.contains(a));
        if let Err(e) = save_prefs(&self.config.data_dir, &prefs) {
            tracing::warn!(error = %e, "could not save engine state");
        }
        prefs.pending_revocations.is_empty()
    }

    /// A request failed for want of a network: offline now.
    fn on_network_error(&self, e: &Error) {
        if matches!(e, Error::Network { .. }) {
            let was = std::mem::replace(&mut lock(&self.flags).online, false);
            self.publish();
            if was {
                let _ = self.wake.send(Wake::Changed);
            }
        }
    }

    /// The server ended the session: keep the local data, forget the tokens.
    async fn end_session(&self, e: &Error) {
        let Some(acc) = lock(&self.account).take() else {
            return;
        };
        let state = if matches!(e, Error::SessionExpired) {
            SessionState::Expired
        } else {
            SessionState::Revoked
        };
        // The dead tokens leave the keychain before anyone is told the
        // session ended.
        if let Err(e) = self.close_entry(acc.entry.account(), None).await {
            tracing::warn!(error = %e, "could not delete the ended session from the keychain");
        }
        {
            let mut f = lock(&self.flags);
            f.online = false;
            f.ended = Some((state, acc.entry.user.clone(), acc.entry.server.clone()));
            f.ended_store = Some(acc.store.clone());
            f.last_error = Some(e.into());
        }
        self.publish();
    }

    /// The access token to send and its generation, refreshing first when
    /// less than a fifth of its life is left.
    async fn fresh_token(&self) -> Result<(String, u64)> {
        let (token, generation, stale) = {
            let acc = lock(&self.account);
            let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
            let stale = acc.refresh_in_doubt
                || policy::should_refresh(acc.claims.iat, acc.claims.exp, self.server_now());
            (acc.entry.access_token.clone(), acc.generation, stale)
        };
        if !stale {
            return Ok((token, generation));
        }
        self.refresh(generation).await?;
        self.current_token()
    }

    fn current_token(&self) -> Result<(String, u64)> {
        let acc = lock(&self.account);
        let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
        Ok((acc.entry.access_token.clone(), acc.generation))
    }

    /// One refresh for everyone: callers that saw `seen` wait on the lock,
    /// and whoever comes second finds the work done. It runs on a task of
    /// its own, so a caller that gives up cannot cancel it between the
    /// server's rotation and the keychain write.
    async fn refresh(&self, seen: u64) -> Result<()> {
        let inner = self.me.upgrade().ok_or(Error::NotSignedIn)?;
        tokio::spawn(async move { inner.refresh_now(seen).await })
            .await
            .map_err(|e| Error::Server(format!("the refresh task failed: {e}")))?
    }

    async fn refresh_now(&self, seen: u64) -> Result<()> {
        self.ensure_network()?;
        let _guard = self.refresh_lock.lock().await;
        let (server, issuer, refresh_token, mut keys, mut jwks, generation) = {
            let acc = lock(&self.account);
            let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
            (
                acc.entry.server.clone(),
                acc.entry.issuer.clone(),
                acc.entry.refresh_token.clone(),
                acc.keys.clone(),
                acc.entry.jwks.clone(),
                acc.generation,
            )
        };
        if generation != seen {
            return Ok(());
        }
        let tokens = self.rotate_refresh_token(&server, &refresh_token).await?;
        let claims = match self
            .verify_new_token(&server, &issuer, &mut keys, &mut jwks, &tokens.access_token)
            .await
        {
            Ok(c) => c,
            // Not verifiable yet (the new key could not be fetched, or the
            // token does not check out against it): the session stays, on
            // the new refresh token already kept, and the next call tries
            // again.
            Err(e @ Error::Network { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "a refreshed access token could not be verified; retrying later");
                return Err(Error::Server(format!(
                    "a new sign-in token could not be verified yet ({e})"
                )));
            }
        };
        let now = self.now();
        let entry = {
            let mut acc = lock(&self.account);
            let acc = acc.as_mut().ok_or(Error::NotSignedIn)?;
            if claims.sub != acc.entry.user.id {
                return Err(Error::Token(latchkey_protocol::TokenError::Signature));
            }
            acc.entry.access_token = tokens.access_token;
            acc.entry.jwks = jwks;
            acc.confirmed(now);
            acc.keys = keys;
            acc.claims = claims;
            acc.generation += 1;
            acc.entry.clone()
        };
        self.persist_entry(&entry).await;
        self.publish();
        Ok(())
    }

    /// Presents the refresh token and keeps its successor. The server spends
    /// the old token as it answers, so the new one reaches the keychain
    /// before anything else can fail; an answer that never came leaves the
    /// refresh in doubt, to be retried at the next contact.
    async fn rotate_refresh_token(&self, server: &str, token: &str) -> Result<TokenResponse> {
        let answer =
            match api::refresh_grant(self.http.as_ref(), server, token, self.timeouts()).await {
                Ok(a) => a,
                Err(e) => {
                    if e.ends_session() {
                        self.end_session(&e).await;
                    } else if let (Error::Network { .. }, Some(acc)) =
                        (&e, lock(&self.account).as_mut())
                    {
                        acc.refresh_in_doubt = true;
                    }
                    self.on_network_error(&e);
                    return Err(e);
                }
            };
        self.note_server_time(answer.server_time);
        let tokens = answer.value;
        let now = self.now();
        let entry = {
            let mut acc = lock(&self.account);
            let acc = acc.as_mut().ok_or(Error::NotSignedIn)?;
            acc.entry.refresh_token = tokens.refresh_token.clone();
            acc.entry.refresh_expires_at = now + tokens.refresh_expires_in as i64;
            acc.refresh_in_doubt = false;
            acc.entry.clone()
        };
        // On failure the session goes on from memory (shown), and the
        // server's retry window covers the old token for a minute.
        self.persist_entry(&entry).await;
        Ok(tokens)
    }

    /// Runs an authenticated call: refresh first if needed, and after a 401
    /// one refresh and one retry.
    async fn authed<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = std::result::Result<Answer<T>, ApiError>>,
    {
        self.ensure_network()?;
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
                self.note_server_time(a.server_time);
                Ok(a.value)
            }
            Err(e) => {
                let e = e.into_error();
                if e.ends_session() {
                    self.end_session(&e).await;
                }
                self.on_network_error(&e);
                Err(e)
            }
        }
    }

    /// The reconnect check; on success the session is confirmed (and
    /// unlocked if the clock had been set back).
    async fn confirm(&self) -> Result<latchkey_protocol::SessionInfo> {
        let (server, _) = self.server_and_user()?;
        let t = self.timeouts();
        let http = self.http.clone();
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
            acc.entry.refresh_expires_at =
                info.refresh_expires_at - self.clock_offset.load(Ordering::Relaxed);
            acc.entry.clone()
        };
        self.persist_entry(&entry).await;
        {
            // An answer that arrives after Work offline was switched on
            // does not make the engine online (nor skip the offline policy).
            let mut f = lock(&self.flags);
            f.online = !f.work_offline;
        }
        self.publish();
        Ok(info)
    }

    fn server_and_user(&self) -> Result<(String, UserInfo)> {
        let acc = lock(&self.account);
        let acc = acc.as_ref().ok_or(Error::NotSignedIn)?;
        Ok((acc.entry.server.clone(), acc.entry.user.clone()))
    }

    fn store(&self) -> Result<Arc<Mutex<LocalStore>>> {
        lock(&self.account)
            .as_ref()
            .map(|a| a.store.clone())
            .ok_or(Error::NotSignedIn)
    }

    /// Single-flight sync: confirm the session, push the outbox, pull.
    async fn sync(&self) -> Result<()> {
        self.ensure_network()?;
        let _guard = self.sync_lock.lock().await;
        let result = self.sync_steps().await;
        if let Ok(store) = self.store() {
            let outcome = match &result {
                Ok(()) => SYNC_OK.to_string(),
                Err(e) => e.to_string(),
            };
            let now = self.now();
            let _ = blocking(move || lock(&store).set_last_sync(now, &outcome)).await;
        }
        match &result {
            Ok(()) => lock(&self.flags).last_error = None,
            Err(e) => lock(&self.flags).last_error = Some(e.into()),
        }
        self.publish();
        result
    }

    async fn sync_steps(&self) -> Result<()> {
        self.revoke_pending().await;
        self.confirm().await?;
        let (server, _) = self.server_and_user()?;
        let sync = Syncer {
            inner: self,
            server,
            store: self.store()?,
            t: self.timeouts(),
            too_large: Mutex::default(),
        };
        let (since, first_page) = sync.push_outbox().await?;
        match sync.pull_all(since, first_page).await {
            // The server was restored from an older backup: compare
            // everything with it, queue again what it lost, and push that.
            Err(Error::CursorAhead) => {
                sync.resync().await?;
                let (since, first_page) = sync.push_outbox().await?;
                sync.pull_all(since, first_page).await?;
            }
            other => other?,
        }
        let refused = std::mem::take(&mut *lock(&sync.too_large));
        if refused.is_empty() {
            return Ok(());
        }
        // Unsent again, so that an edit of the note can replace them.
        let s = sync.store.clone();
        blocking(move || refused.into_iter().try_for_each(|op| lock(&s).unsend(op))).await?;
        Err(Error::TooLarge)
    }

    fn has_session(&self) -> bool {
        lock(&self.account).is_some()
    }

    async fn probe(&self) -> Result<()> {
        let server = match self.server_and_user() {
            Ok((s, _)) => s,
            Err(_) => return Err(Error::NotSignedIn),
        };
        let date = api::healthz(self.http.as_ref(), &server, self.timeouts()).await?;
        self.note_server_time(date);
        Ok(())
    }
}

/// One sync's calls, over the engine's authenticated requests.
struct Syncer<'a> {
    inner: &'a Inner,
    server: String,
    store: Arc<Mutex<LocalStore>>,
    t: Timeouts,
    /// Ops refused as too large even alone (a proxy's lower limit): they
    /// stay queued, the rest of the sync goes on, and the sync says so.
    too_large: Mutex<Vec<Uuid>>,
}

impl Syncer<'_> {
    /// Pushes `ops`; a batch refused as too large is split in two and each
    /// half pushed in turn, so that one big note never blocks the others.
    fn push(
        &self,
        ops: Vec<Op>,
    ) -> Pin<Box<dyn Future<Output = Result<PushResponse>> + Send + '_>> {
        Box::pin(async move {
            let body = Arc::new(PushRequest { ops });
            let (http, server, t) = (&self.inner.http, &self.server, self.t);
            let answer = self
                .inner
                .authed(|token| {
                    let (http, server, body) = (http.clone(), server.clone(), body.clone());
                    async move { api::push(http.as_ref(), &server, &token, &body, t).await }
                })
                .await;
            let mut ops = match answer {
                Err(Error::TooLarge) => Arc::unwrap_or_clone(body).ops,
                answer => return answer,
            };
            if ops.len() == 1 {
                tracing::warn!("the server refused a note as too large; it stays queued");
                lock(&self.too_large).push(ops[0].op_id());
                return Ok(PushResponse {
                    results: Vec::new(),
                    cursor: 0,
                });
            }
            let second = ops.split_off(ops.len() / 2);
            let mut first = self.push(ops).await?;
            let second = self.push(second).await?;
            first.results.extend(second.results);
            first.cursor = first.cursor.max(second.cursor);
            Ok(first)
        })
    }

    async fn pull(&self, since: i64) -> Result<PullResponse> {
        let (http, server, t) = (&self.inner.http, &self.server, self.t);
        self.inner
            .authed(|token| {
                let (http, server) = (http.clone(), server.clone());
                async move { api::pull(http.as_ref(), &server, &token, since, PULL_PAGE, t).await }
            })
            .await
    }

    async fn apply(&self, answer: PushResponse) -> Result<()> {
        let s = self.store.clone();
        let changed = blocking(move || lock(&s).apply_push(&answer.results)).await?;
        self.inner.notes_changed_by(changed);
        Ok(())
    }

    /// Pushes the whole outbox, pipelined: while one batch is on the wire
    /// the next is prepared (unsent ops only: the batch in flight is
    /// already marked sent) and answers are applied, in order, behind the
    /// pushes: a batch goes as soon as the answer before it is in and it is
    /// ready, whether or not that answer is applied yet. Ops marked sent
    /// whose answer never comes are sent again, first, by the next sync.
    ///
    /// Returns where the pull starts, and its first page if it was fetched
    /// while the last answer was applied.
    async fn push_outbox(&self) -> Result<(i64, Option<Result<PullResponse>>)> {
        let s = self.store.clone();
        let (mut ops, mut since) = blocking(move || {
            let mut store = lock(&s);
            Ok((store.next_batch(PUSH_BATCH)?, store.cursor()?))
        })
        .await?;
        // The answers received and not yet applied, as one future (never
        // one that has finished: that is replaced by `nothing_to_apply`).
        let mut applying = nothing_to_apply();
        let mut applied = true;
        // Every op this sync pushed, so none is sent twice by it.
        let mut pushed = std::collections::HashSet::new();
        // The first pull page, fetched while the last push answer is applied.
        let mut first_page = None;
        while !ops.is_empty() {
            pushed.extend(ops.iter().map(Op::op_id));
            let s = self.store.clone();
            let prepare = blocking(move || lock(&s).next_unsent_batch(PUSH_BATCH));
            let mut both = std::pin::pin!(async { tokio::join!(self.push(ops), prepare) });
            let (answer, next) = loop {
                // Biased: the next batch is taken before an answer is
                // applied, so that it is ready when this push returns.
                tokio::select! {
                    biased;
                    r = &mut both => break r,
                    r = &mut applying, if !applied => {
                        applied = true;
                        applying = nothing_to_apply();
                        r?;
                    }
                }
            };
            let answer = match answer.and_then(|a| next.map(|n| (a, n))) {
                Ok((answer, next)) => {
                    ops = next;
                    answer
                }
                Err(e) => {
                    // What was answered is applied before the sync ends.
                    applying.await?;
                    return Err(e);
                }
            };
            let before = std::mem::replace(&mut applying, nothing_to_apply());
            applying = Box::pin(async move {
                before.await?;
                self.apply(answer).await
            });
            applied = false;
            // The last answer can give edits queued behind its ops their
            // base: apply it and look again, so that a sync leaves nothing
            // it could have sent. Nothing is in flight now, so ops still
            // marked sent and not pushed by this sync are ones whose answer
            // was lost before it (a lost answer leaves two pipelined
            // batches marked sent, and the first look took one): resend them.
            // Meanwhile the pull starts: its page is applied only after the
            // answers, and dropped if there is more to push or an answer
            // moved the cursor back (a conflict whose server note was left
            // out of the answer: the pull brings it).
            if ops.is_empty() {
                let settled = std::mem::replace(&mut applying, nothing_to_apply());
                applied = true;
                let s = self.store.clone();
                let settle = async {
                    settled.await?;
                    blocking(move || {
                        let mut store = lock(&s);
                        Ok((store.next_batch(PUSH_BATCH)?, store.cursor()?))
                    })
                    .await
                };
                let (next, page) = tokio::join!(settle, self.pull(since));
                let cursor;
                (ops, cursor) = next?;
                ops.retain(|op| !pushed.contains(&op.op_id()));
                first_page = (ops.is_empty() && cursor == since).then_some(page);
                since = cursor;
            }
        }
        Ok((since, first_page))
    }

    /// Pulls until `more` is false, a page applied while the next is fetched.
    async fn pull_all(
        &self,
        mut since: i64,
        first_page: Option<Result<PullResponse>>,
    ) -> Result<()> {
        let mut page = match first_page {
            Some(page) => page?,
            None => self.pull(since).await?,
        };
        loop {
            let more = page.more && page.cursor > since;
            since = page.cursor;
            let s = self.store.clone();
            let apply = async {
                let changed = blocking(move || lock(&s).apply_pull(&page)).await?;
                self.inner.notes_changed_by(changed);
                Ok(())
            };
            if !more {
                return apply.await;
            }
            let (applied, next) = tokio::join!(apply, self.pull(since));
            applied?;
            page = next?;
        }
    }

    /// Compares every note with a server that lost changes (PROTOCOL.md
    /// v1.1: a cursor ahead of the server), and queues again what it lacks
    /// or holds at an older text; the push that follows gives it back.
    async fn resync(&self) -> Result<()> {
        tracing::warn!(
            "the server is behind this device (restored from a backup?); resyncing from 0"
        );
        let s = self.store.clone();
        blocking(move || lock(&s).begin_resync()).await?;
        let mut since = 0;
        loop {
            let page = self.pull(since).await?;
            let more = page.more && page.cursor > since;
            since = page.cursor;
            let (s, now) = (self.store.clone(), self.inner.now());
            blocking(move || lock(&s).apply_resync_page(&page, now)).await?;
            if !more {
                break;
            }
        }
        let (s, now) = (self.store.clone(), self.inner.now());
        blocking(move || lock(&s).finish_resync(since, now)).await?;
        self.inner.notes_changed_by(1);
        Ok(())
    }
}

/// Connectivity and scheduled syncs. While online: `/healthz` every
/// heartbeat, a sync every `sync_interval` and shortly after edits. While
/// offline: probes with backoff; the first success runs the reconnect sync.
async fn run_loop(weak: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Wake>) {
    let mut attempt = 0u32;
    let mut last_sync: Option<Instant> = None;
    let mut edit_due: Option<Instant> = None;
    // Work offline just turned off: act at once, not after the next wait.
    let mut now = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (online, work_offline) = {
            let f = lock(&inner.flags);
            (f.online, f.work_offline)
        };
        let has_work = inner.has_session() || !lock(&inner.prefs).pending_revocations.is_empty();
        let c = &inner.config;
        let mut wait = if !has_work {
            None
        } else if work_offline {
            // No traffic, but the offline policy is still re-evaluated.
            inner.has_session().then_some(c.heartbeat)
        } else if std::mem::take(&mut now) {
            Some(Duration::ZERO)
        } else if online {
            let to_sync = last_sync.map_or(Duration::ZERO, |t| {
                c.sync_interval.saturating_sub(t.elapsed())
            });
            Some(c.heartbeat.min(to_sync))
        } else {
            Some(policy::backoff(attempt, c.backoff_min, c.backoff_max))
        };
        if let (Some(due), true) = (edit_due, online && !work_offline) {
            let until = due.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        drop(inner);
        let woke = match wait {
            Some(w) => tokio::select! {
                w = rx.recv() => Some(w),
                _ = tokio::time::sleep(w) => None,
            },
            None => Some(rx.recv().await),
        };
        let Some(inner) = weak.upgrade() else { return };
        match woke {
            Some(None) => return,
            Some(Some(Wake::Edited)) => {
                edit_due = Some(Instant::now() + inner.config.edit_debounce);
                continue;
            }
            Some(Some(Wake::Changed)) => {
                attempt = 0;
                continue;
            }
            Some(Some(Wake::Resume)) => {
                attempt = 0;
                now = true;
                continue;
            }
            None => {}
        }
        if work_offline {
            inner.publish();
            continue;
        }
        if !inner.has_session() {
            if !inner.revoke_pending().await {
                attempt = attempt.saturating_add(1);
            }
            continue;
        }
        // Re-evaluate the offline policy: the grace may run out while we wait.
        inner.publish();
        let due_edit = edit_due.is_some_and(|d| d <= Instant::now());
        let due_sync = last_sync.is_none_or(|t| t.elapsed() >= inner.config.sync_interval);
        if online && !due_edit && !due_sync {
            if let Err(e) = inner.probe().await {
                tracing::info!(error = %e, "the server stopped answering");
                lock(&inner.flags).online = false;
                inner.publish();
                attempt = 0;
            }
            continue;
        }
        if !online && inner.probe().await.is_err() {
            attempt = attempt.saturating_add(1);
            continue;
        }
        attempt = 0;
        edit_due = None;
        last_sync = Some(Instant::now());
        let _ = sync_with_heartbeat(&inner).await;
    }
}

/// Runs a sync on its own task and keeps the heartbeat going meanwhile, so
/// a server that stops answering mid-sync shows as offline within seconds
/// instead of when the sync's own timeout runs out; that sync is then
/// dropped (what it marked sent is sent again, first, by the next one) so
/// that the reconnect sync can start as soon as the server is back.
async fn sync_with_heartbeat(inner: &Arc<Inner>) -> Result<()> {
    let mut sync = tokio::spawn({
        let inner = inner.clone();
        async move { inner.sync().await }
    });
    loop {
        tokio::select! {
            done = &mut sync => {
                let result = done.unwrap_or_else(|e| Err(Error::Storage(format!("the sync task failed: {e}"))));
                if let Err(e) = &result {
                    tracing::info!(error = %e, "sync did not complete");
                }
                return result;
            }
            _ = tokio::time::sleep(inner.config.heartbeat) => {
                if lock(&inner.flags).online && inner.probe().await.is_err() {
                    sync.abort();
                    let e = Error::Network { detail: "the server stopped answering".into() };
                    inner.on_network_error(&e);
                    inner.record::<()>(&Err(e.clone()));
                    return Err(e);
                }
            }
        }
    }
}
