//! The status snapshot the UI follows: one value, published whole on every
//! change through a `tokio::sync::watch`.

use latchkey_protocol::UserInfo;
use serde::Serialize;

/// The session states of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// No stored session: the login form.
    SignedOut,
    /// Server reachable, session confirmed.
    Online,
    /// Server unreachable (or working offline); session verified locally and
    /// within the offline policy.
    Offline,
    /// Offline and the offline policy ran out: notes hidden.
    Locked,
    /// The server ended the session by time: sign in again, notes kept.
    Expired,
    /// The server ended the session (sign-out elsewhere, an administrator,
    /// a reused refresh token): sign in again, notes kept.
    Revoked,
}

/// An error as the UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusError {
    pub code: String,
    pub message: String,
}

impl From<&crate::Error> for StatusError {
    fn from(e: &crate::Error) -> Self {
        Self {
            code: e.code().into(),
            message: e.to_string(),
        }
    }
}

/// An account signed in on this device, as the account menu lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountItem {
    pub server: String,
    pub username: String,
    /// The account the app shows and syncs now.
    pub active: bool,
}

/// Everything the status bar and the screens need. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub state: SessionState,
    /// Who is (or was, for `expired`/`revoked`) signed in.
    pub user: Option<UserInfo>,
    pub server: Option<String>,
    /// The server is reachable and the session confirmed.
    pub online: bool,
    /// The user's "Work offline" switch.
    pub work_offline: bool,
    /// Notes with an unsent or unacknowledged change.
    pub pending: u64,
    /// Moves whenever a sync changed notes on this device (another
    /// device's edit, a conflict): the UI reloads the list and the open note.
    pub notes_changed: u64,
    /// The last sync that worked.
    pub last_sync_at: Option<i64>,
    /// The last sync attempt, whether or not it worked.
    pub last_sync_attempt_at: Option<i64>,
    /// `ok`, or the sentence of the error that stopped the last attempt.
    pub last_sync_result: Option<String>,
    /// The access token's expiry.
    pub access_expires_at: Option<i64>,
    /// Until when the session holds offline (wall clock).
    pub offline_until: Option<i64>,
    /// Why the session is locked, as a sentence.
    pub locked_reason: Option<String>,
    pub last_error: Option<StatusError>,
    /// The search index of the notes stored before search existed is being
    /// built: how far. `None` once it is whole.
    pub search_index: Option<crate::store::IndexProgress>,
    /// Every account signed in on this device, oldest first.
    pub accounts: Vec<AccountItem>,
}

impl Status {
    pub fn signed_out() -> Self {
        Self {
            state: SessionState::SignedOut,
            user: None,
            server: None,
            online: false,
            work_offline: false,
            pending: 0,
            notes_changed: 0,
            last_sync_at: None,
            last_sync_attempt_at: None,
            last_sync_result: None,
            access_expires_at: None,
            offline_until: None,
            locked_reason: None,
            last_error: None,
            search_index: None,
            accounts: Vec::new(),
        }
    }
}
