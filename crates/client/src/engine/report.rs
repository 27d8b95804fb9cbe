//! Where the engine's parts report, at the bottom so that none of them
//! calls back up: the link flags (online, "Work offline"), the last error,
//! the notes-changed counter, and the wake-ups of the connectivity loop.
//! [`Reporter::publish`] composes them with the session's view into the
//! [`Status`], published whole through a `watch`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use latchkey_protocol::UserInfo;
use tokio::sync::{mpsc, watch};

use super::blocking::lock;
use crate::error::{Error, Result};
use crate::policy::Verdict;
use crate::status::{AccountItem, SessionState, Status, StatusError};
use crate::store::{IndexProgress, SyncRecord};

/// Why the connectivity loop is woken.
pub(crate) enum Wake {
    /// Something changed (sign-in, Work offline on, a failed request).
    Changed,
    /// Work offline turned off: try the network at once.
    Resume,
    /// A note was saved: sync soon, debounced.
    Edited,
    /// Another account is active: check it with its server and sync now.
    Switched,
}

/// The session's part of the status, as the session sees it when it
/// publishes (the offline policy evaluated then).
pub(crate) enum SessionView {
    SignedOut,
    /// The server ended the session: its state, user and server, and the
    /// pending count of its notes (`None` while a sync holds the store: the
    /// last status' count stands).
    Ended(SessionState, UserInfo, String, Option<u64>),
    Active(ActiveView),
}

/// A signed-in account, for the status.
pub(crate) struct ActiveView {
    pub(crate) user: UserInfo,
    pub(crate) server: String,
    pub(crate) access_expires_at: i64,
    pub(crate) verdict: Verdict,
    /// The keychain refused a write of the session: shown over the last error.
    pub(crate) keychain_error: Option<StatusError>,
    /// The pending count and the sync record; `None` while a sync holds the
    /// store: the last status' figures stand.
    pub(crate) figures: Option<(u64, SyncRecord)>,
}

/// What the status shows besides the session.
#[derive(Default)]
struct Link {
    online: bool,
    work_offline: bool,
    last_error: Option<StatusError>,
    indexing: Option<IndexProgress>,
}

/// The flags every part reports into, and the status they make.
pub(crate) struct Reporter {
    status: watch::Sender<Status>,
    link: Mutex<Link>,
    /// Bumped whenever a sync changes notes ([`Status::notes_changed`]).
    notes_changed: AtomicU64,
    wake: mpsc::UnboundedSender<Wake>,
}

impl Reporter {
    /// The reporter, and the receiving end of its wake-ups for the loop.
    pub(crate) fn new(work_offline: bool) -> (Self, mpsc::UnboundedReceiver<Wake>) {
        let (wake, rx) = mpsc::unbounded_channel();
        let link = Link {
            work_offline,
            ..Link::default()
        };
        let reporter = Self {
            status: watch::Sender::new(Status::signed_out()),
            link: Mutex::new(link),
            notes_changed: AtomicU64::default(),
            wake,
        };
        (reporter, rx)
    }

    pub(crate) fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub(crate) fn wake(&self, wake: Wake) {
        let _ = self.wake.send(wake);
    }

    /// `(online, work_offline)`.
    pub(crate) fn link(&self) -> (bool, bool) {
        let link = lock(&self.link);
        (link.online, link.work_offline)
    }

    pub(crate) fn online(&self) -> bool {
        lock(&self.link).online
    }

    /// Refuses network traffic while "Work offline" is on.
    pub(crate) fn ensure_network(&self) -> Result<()> {
        if lock(&self.link).work_offline {
            Err(Error::WorkingOffline)
        } else {
            Ok(())
        }
    }

    /// Offline now; returns whether it was online.
    pub(crate) fn went_offline(&self) -> bool {
        std::mem::replace(&mut lock(&self.link).online, false)
    }

    /// The server answered: online, unless Work offline was switched on
    /// meanwhile.
    pub(crate) fn came_online(&self) {
        let mut link = lock(&self.link);
        link.online = !link.work_offline;
    }

    pub(crate) fn set_work_offline(&self, on: bool) {
        let mut link = lock(&self.link);
        link.work_offline = on;
        if on {
            link.online = false;
        }
    }

    pub(crate) fn set_error(&self, error: Option<StatusError>) {
        lock(&self.link).last_error = error;
    }

    /// The pending count read by an edit: the status shows it even if a
    /// sync holds the store when it is next composed.
    pub(crate) fn set_pending(&self, pending: u64) {
        self.status.send_modify(|st| st.pending = pending);
    }

    /// How far the search index is built (`None`: whole).
    pub(crate) fn set_indexing(&self, progress: Option<IndexProgress>) {
        lock(&self.link).indexing = progress;
    }

    /// A sync changed `n` notes: the next status tells the UI.
    pub(crate) fn notes_changed(&self, n: usize) {
        if n > 0 {
            self.notes_changed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Builds the status from the session's view and the flags, and
    /// publishes it if anything changed.
    pub(crate) fn publish(&self, view: SessionView, accounts: Vec<AccountItem>) {
        let mut status = self.compose(view);
        status.accounts = accounts;
        self.status.send_if_modified(|old| {
            if *old == status {
                false
            } else {
                *old = status;
                true
            }
        });
    }

    fn compose(&self, view: SessionView) -> Status {
        let (online, work_offline, last_error, indexing) = {
            let link = lock(&self.link);
            (
                link.online,
                link.work_offline,
                link.last_error.clone(),
                link.indexing,
            )
        };
        let mut st = Status::signed_out();
        st.work_offline = work_offline;
        st.notes_changed = self.notes_changed.load(Ordering::Relaxed);
        st.last_error = last_error;
        match view {
            SessionView::SignedOut => {}
            SessionView::Ended(state, user, server, pending) => {
                st.state = state;
                st.user = Some(user);
                st.server = Some(server);
                // The outbox is kept for the next sign-in: still pending.
                st.pending = pending.unwrap_or_else(|| self.status.borrow().pending);
            }
            SessionView::Active(active) => {
                st.online = online && !work_offline;
                st.search_index = indexing;
                self.compose_active(&mut st, active);
            }
        }
        st
    }

    fn compose_active(&self, st: &mut Status, active: ActiveView) {
        if active.keychain_error.is_some() {
            st.last_error = active.keychain_error;
        }
        st.user = Some(active.user);
        st.server = Some(active.server);
        st.access_expires_at = Some(active.access_expires_at);
        st.state = if st.online {
            SessionState::Online
        } else {
            SessionState::Offline
        };
        match active.verdict {
            Verdict::Usable { until } => st.offline_until = Some(until),
            Verdict::Locked(reason) if !st.online => {
                st.state = SessionState::Locked;
                st.locked_reason = Some(reason.sentence().into());
            }
            Verdict::Locked(_) => {}
        }
        match active.figures {
            Some((pending, record)) => {
                st.pending = pending;
                st.last_sync_at = record.ok_at;
                if let Some((at, outcome)) = record.attempt {
                    st.last_sync_attempt_at = Some(at);
                    st.last_sync_result = Some(outcome);
                }
            }
            None => {
                let prev = self.status.borrow();
                st.pending = prev.pending;
                st.last_sync_at = prev.last_sync_at;
                st.last_sync_attempt_at = prev.last_sync_attempt_at;
                st.last_sync_result = prev.last_sync_result.clone();
            }
        }
    }
}
