//! Connectivity and scheduled syncs: the engine's background loop. While
//! online: the live-updates stream open, `/healthz` every heartbeat, a sync
//! shortly after edits and every `sync_interval` as a backstop. While
//! offline: probes with backoff; the first success runs the reconnect sync.
//! It decides when; the session probes, the syncer syncs and the stream
//! brings news.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::Config;
use super::live::Live;
use super::report::{Reporter, Wake};
use super::revocations::Revocations;
use super::session::Session;
use super::sync::Syncer;
use crate::error::{Error, Result};
use crate::policy;

/// Decides when to probe and when to sync, for the background loop and
/// for the app's "sync now".
pub(crate) struct Connectivity {
    session: Arc<Session>,
    syncer: Arc<Syncer>,
    live: Arc<Live>,
    revocations: Arc<Revocations>,
    reporter: Arc<Reporter>,
    heartbeat: Duration,
    sync_interval: Duration,
    edit_debounce: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

/// Aborts the background loop, and closes the live-updates stream, when
/// dropped.
pub(crate) struct LoopGuard(tokio::task::JoinHandle<()>, Arc<Live>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.abort();
        self.1.want(false);
    }
}

/// What the loop remembers between rounds.
#[derive(Default)]
struct Plan {
    /// Offline probes failed in a row: the backoff's step.
    attempt: u32,
    last_sync: Option<Instant>,
    /// A sync is due then, after an edit.
    edit_due: Option<Instant>,
    /// Work offline just turned off: act at once, not after the next wait.
    now: bool,
}

impl Plan {
    fn woken(&mut self, wake: Wake, edit_debounce: Duration) {
        match wake {
            Wake::Edited => self.edit_due = Some(Instant::now() + edit_debounce),
            Wake::Changed => self.attempt = 0,
            Wake::Resume => {
                self.attempt = 0;
                self.now = true;
            }
            Wake::Switched => {
                self.attempt = 0;
                self.now = true;
                self.edit_due = Some(Instant::now());
            }
        }
    }
}

impl Connectivity {
    pub(crate) fn new(
        config: &Config,
        session: Arc<Session>,
        syncer: Arc<Syncer>,
        live: Arc<Live>,
        revocations: Arc<Revocations>,
        reporter: Arc<Reporter>,
    ) -> Self {
        Self {
            session,
            syncer,
            live,
            revocations,
            reporter,
            heartbeat: config.heartbeat,
            sync_interval: config.sync_interval,
            edit_debounce: config.edit_debounce,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
        }
    }

    /// Starts the loop, woken through `rx`. It holds the connectivity only
    /// while it works, so it ends once every other holder has let go.
    pub(crate) fn start(self: &Arc<Self>, rx: mpsc::UnboundedReceiver<Wake>) -> LoopGuard {
        LoopGuard(
            tokio::spawn(run_loop(Arc::downgrade(self), rx)),
            self.live.clone(),
        )
    }

    /// Another account became the active one: the stream of the one before
    /// closes, and the new one is checked with its server and synced now.
    pub(crate) fn account_changed(&self) {
        self.live.want(false);
        self.reporter.wake(Wake::Switched);
    }

    /// Runs a sync on its own task and keeps the heartbeat going meanwhile, so
    /// a server that stops answering mid-sync shows as offline within seconds
    /// instead of when the sync's own timeout runs out; that sync is then
    /// dropped (what it marked sent is sent again, first, by the next one) so
    /// that the reconnect sync can start as soon as the server is back.
    pub(crate) async fn sync_with_heartbeat(&self) -> Result<()> {
        let mut sync = tokio::spawn({
            let syncer = self.syncer.clone();
            async move { syncer.run().await }
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
                _ = tokio::time::sleep(self.heartbeat) => {
                    if self.reporter.online() && self.session.probe().await.is_err() {
                        sync.abort();
                        let e = Error::Network { detail: "the server stopped answering".into() };
                        self.session.lost_network(&e);
                        self.session.show_error(&e);
                        return Err(e);
                    }
                }
            }
        }
    }

    /// How long to wait before the next round; `None`: until woken.
    fn wait(&self, plan: &mut Plan, online: bool, work_offline: bool) -> Option<Duration> {
        let has_work = self.session.has_session() || self.revocations.any();
        let mut wait = if !has_work {
            None
        } else if work_offline {
            // No traffic, but the offline policy is still re-evaluated.
            self.session.has_session().then_some(self.heartbeat)
        } else if std::mem::take(&mut plan.now) {
            Some(Duration::ZERO)
        } else if online {
            let to_sync = plan.last_sync.map_or(Duration::ZERO, |t| {
                self.sync_interval.saturating_sub(t.elapsed())
            });
            Some(self.heartbeat.min(to_sync))
        } else {
            Some(policy::backoff(
                plan.attempt,
                self.backoff_min,
                self.backoff_max,
            ))
        };
        if let (Some(due), true) = (plan.edit_due, online && !work_offline) {
            let until = due.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        wait
    }

    /// One round after a wait: the offline policy re-evaluated, then a
    /// heartbeat, a probe, a sync or the owed revocations, as due.
    async fn round(&self, plan: &mut Plan, online: bool, work_offline: bool) {
        if work_offline {
            self.session.publish();
            return;
        }
        if !self.session.has_session() {
            if !self.revocations.retry().await {
                plan.attempt = plan.attempt.saturating_add(1);
            }
            return;
        }
        // Re-evaluate the offline policy: the grace may run out while we wait.
        self.session.publish();
        let due_edit = plan.edit_due.is_some_and(|d| d <= Instant::now());
        let due_sync = plan
            .last_sync
            .is_none_or(|t| t.elapsed() >= self.sync_interval);
        if online && !due_edit && !due_sync {
            if let Err(e) = self.session.probe().await {
                tracing::info!(error = %e, "the server stopped answering");
                self.reporter.went_offline();
                self.session.publish();
                plan.attempt = 0;
            }
            return;
        }
        if !online && self.session.probe().await.is_err() {
            plan.attempt = plan.attempt.saturating_add(1);
            return;
        }
        plan.attempt = 0;
        plan.edit_due = None;
        plan.last_sync = Some(Instant::now());
        let _ = self.sync_with_heartbeat().await;
    }
}

/// The loop: wait (for the plan's time or a wake-up), then a round.
async fn run_loop(weak: Weak<Connectivity>, mut rx: mpsc::UnboundedReceiver<Wake>) {
    let mut plan = Plan::default();
    loop {
        let Some(link) = weak.upgrade() else { return };
        let (online, work_offline) = link.reporter.link();
        link.live
            .want(online && !work_offline && link.session.has_session());
        let wait = link.wait(&mut plan, online, work_offline);
        drop(link);
        let woke = match wait {
            Some(w) => tokio::select! {
                w = rx.recv() => Some(w),
                _ = tokio::time::sleep(w) => None,
            },
            None => Some(rx.recv().await),
        };
        let Some(link) = weak.upgrade() else { return };
        match woke {
            Some(None) => return,
            Some(Some(wake)) => plan.woken(wake, link.edit_debounce),
            None => link.round(&mut plan, online, work_offline).await,
        }
    }
}
