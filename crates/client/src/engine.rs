//! The engine: the accounts signed in on this device, one of them active at
//! a time, its session state machine, the single-flight refresh,
//! connectivity, and reconnect sync. The app builds one [`Engine`] and
//! calls it.
//!
//! [`Engine`] is a facade over parts that each own their state and depend
//! one way, each on those below it only:
//!
//! * `connectivity`: the background loop (heartbeat, probes, scheduled syncs);
//! * `sync`: the single-flight, pipelined push and pull;
//! * `session`: the account, sign-in and sign-out, refresh, authenticated calls;
//! * `revocations`, `keychain`, `prefs`, `account`, `tokens`: what the
//!   session keeps and checks (owed revocations, keychain entries,
//!   `engine.json`, the account in memory, new tokens and the server's clock);
//! * `report`: the flags, the last error and the status every part reports into.

mod account;
mod blocking;
mod config;
mod connectivity;
mod devices;
mod keychain;
mod live;
mod notes;
mod prefs;
mod report;
mod revocations;
mod session;
mod sync;
mod tokens;

use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

pub use account::user_dir;
pub use config::Config;
pub use notes::{INDEX_BATCH, SEARCH_LIMIT};
pub use sync::PUSH_BATCH;

use blocking::{blocking, lock};
use connectivity::{Connectivity, LoopGuard};
use keychain::Keychain;
use live::Live;
use prefs::Prefs;
use report::{Reporter, Wake};
use revocations::Revocations;
use session::Session;
use sync::Syncer;

use crate::clock::Clock;
use crate::error::Result;
use crate::http::Http;
use crate::status::Status;
use crate::store::{LocalStore, Note, create_private_dir};
use crate::vault::Vault;

/// The engine. Cheap to clone; the background loop stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Engine {
    session: Arc<Session>,
    reporter: Arc<Reporter>,
    connectivity: Arc<Connectivity>,
    http: Arc<dyn Http>,
    timeouts: crate::api::Timeouts,
    _loop: Arc<LoopGuard>,
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
        let dir = config.data_dir.clone();
        let prefs = blocking(move || {
            create_private_dir(&dir)?;
            Ok(Prefs::load(&dir))
        })
        .await?;
        let prefs = Arc::new(prefs);
        let (reporter, rx) = Reporter::new(config.work_offline);
        let reporter = Arc::new(reporter);
        let keychain = Arc::new(Keychain::new(vault));
        let revocations = Arc::new(Revocations::new(
            keychain.clone(),
            prefs.clone(),
            http.clone(),
            config.timeouts,
            reporter.clone(),
        ));
        let session = Session::new(
            &config,
            http.clone(),
            clock,
            keychain,
            prefs,
            revocations.clone(),
            reporter.clone(),
        );
        let syncer = Arc::new(Syncer::new(
            session.clone(),
            revocations.clone(),
            reporter.clone(),
            http.clone(),
            config.timeouts,
        ));
        let live = Arc::new(Live::new(
            session.clone(),
            syncer.clone(),
            http.clone(),
            config.timeouts,
        ));
        let connectivity = Arc::new(Connectivity::new(
            &config,
            session.clone(),
            syncer,
            live,
            revocations,
            reporter.clone(),
        ));
        session.restore().await;
        session.publish();
        notes::tidy_store(session.clone(), reporter.clone());
        let guard = connectivity.start(rx);
        Ok(Engine {
            session,
            reporter,
            connectivity,
            http,
            timeouts: config.timeouts,
            _loop: Arc::new(guard),
        })
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.reporter.status()
    }

    /// Follows every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.reporter.subscribe()
    }

    /// Signs in with a password. The tokens go to the keychain only; the
    /// issuer is pinned from the server's metadata.
    pub async fn sign_in(
        &self,
        server_url: &str,
        username: &str,
        password: &str,
    ) -> Result<Status> {
        let result = self.session.sign_in(server_url, username, password).await;
        self.record(&result);
        if result.is_ok() {
            self.account_changed();
        }
        result.map(|()| self.status())
    }

    /// Makes another account signed in on this device (one of
    /// [`Status::accounts`]) the active one. Needs no network: offline, the
    /// account's own offline policy applies. The account that was active
    /// stays signed in; only the active one syncs.
    pub async fn switch_account(&self, server: &str, username: &str) -> Result<Status> {
        let result = self.session.switch(server, username).await;
        self.record(&result);
        if result.is_ok() {
            self.account_changed();
        }
        result.map(|()| self.status())
    }

    /// After a sign-in or a switch: the new account's stream, sync and
    /// store upkeep.
    fn account_changed(&self) {
        self.connectivity.account_changed();
        notes::tidy_store(self.session.clone(), self.reporter.clone());
    }

    /// The name this device signs in with (shown in the user's list of
    /// sessions): the one set with [`Engine::set_device_name`], else the
    /// machine's host name.
    pub fn device_name(&self) -> String {
        self.session.device_name()
    }

    /// Names this device for the next sign-in (at most 64 characters; `None`
    /// or blank: the host name again). Kept in `engine.json`.
    pub async fn set_device_name(&self, name: Option<&str>) -> Result<()> {
        self.session.set_device_name(name).await
    }

    /// Ends the session in the app at once; revokes it on the server, or,
    /// offline, keeps the refresh token (marked) until it can. `wipe` also
    /// deletes the user's local notes and unsynced changes.
    pub async fn sign_out(&self, wipe: bool) -> Result<Status> {
        let result = self.session.sign_out(wipe).await;
        self.record(&result);
        result.map(|()| self.status())
    }

    /// Turns "Work offline" on (no network traffic at all) or off.
    pub fn set_work_offline(&self, on: bool) {
        self.reporter.set_work_offline(on);
        self.session.publish();
        self.reporter
            .wake(if on { Wake::Changed } else { Wake::Resume });
    }

    /// Syncs now: confirm the session, push, pull. Like the engine's own
    /// syncs, it is cut short when the heartbeat finds the server gone.
    pub async fn sync_now(&self) -> Result<Status> {
        self.reporter.ensure_network()?;
        self.connectivity
            .sync_with_heartbeat()
            .await
            .map(|()| self.status())
    }

    /// `GET /v1/auth/session` with the usual refresh rules: the reconnect
    /// check, also usable on its own.
    pub async fn confirm_session(&self) -> Result<latchkey_protocol::SessionInfo> {
        let r = match self.session.active() {
            Ok(of) => self.session.confirm(&of).await,
            Err(e) => Err(e),
        };
        self.record(&r);
        r
    }

    pub async fn list_notes(&self) -> Result<Vec<Note>> {
        let store = self.session.notes_store()?;
        blocking(move || lock(&store).list_notes()).await
    }

    pub async fn get_note(&self, id: Uuid) -> Result<Note> {
        let store = self.session.notes_store()?;
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
        // Time-ordered ids (as the outbox's op ids): the server's and the
        // local store's indexes then grow at one end instead of touching a
        // random page per note: a batched push costs the server a third of
        // the time (BENCHMARKS.md).
        let id = id.unwrap_or_else(Uuid::now_v7);
        self.edit(move |store, now| store.save_note(id, base_version, &title, &body, now))
            .await
    }

    pub async fn delete_note(&self, id: Uuid) -> Result<()> {
        self.edit(move |store, now| store.delete_note(id, now))
            .await
    }

    /// Keeps the outcome of a user action as the status' last error.
    fn record<T>(&self, result: &Result<T>) {
        if let Err(e) = result {
            self.session.show_error(e);
        }
    }

    /// Runs a change of the notes, durably, then shows it (with the
    /// pending count read in the same turn, so it is never stale) and
    /// schedules a sync.
    async fn edit<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut LocalStore, i64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.session.notes_store()?;
        let now = self.session.now();
        let result = blocking(move || {
            let mut store = lock(&store);
            let out = change(&mut store, now)?;
            Ok((out, store.pending_count()?))
        })
        .await;
        match result {
            Ok((out, pending)) => {
                self.reporter.set_pending(pending);
                self.session.publish();
                self.reporter.wake(Wake::Edited);
                Ok(out)
            }
            Err(e) => {
                self.session.show_error(&e);
                Err(e)
            }
        }
    }
}
