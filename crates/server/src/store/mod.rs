//! Storage behind one trait, so that a Postgres backend can sit beside the
//! SQLite one without touching a handler. Every method is one transaction.

mod sqlite;

use async_trait::async_trait;
use latchkey_protocol::{Op, PullResponse, PushResponse, Reason};

pub use sqlite::SqliteStore;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `user add` of a name that is taken.
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    /// The database could not be opened: path, permissions, not a database.
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The database is from a newer server.
    #[error("the database schema version {found} is newer than this server's ({supported})")]
    TooNew { found: i64, supported: i64 },
    /// Any other database failure.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored value did not decode (a damaged database).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The blocking task running the query was cancelled or panicked.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    /// The Argon2id PHC string.
    pub password_hash: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub username: String,
    pub created_at: i64,
    /// The absolute end of the session.
    pub expires_at: i64,
    pub revoked: Option<Reason>,
}

/// An Ed25519 signing key as stored.
#[derive(Clone)]
pub struct KeyRecord {
    pub kid: String,
    pub secret: [u8; 32],
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// The SHA-256 of a refresh token: all the server keeps of it.
pub type TokenHash = [u8; 32];

/// What became of a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Rotated: `next` is now the session's live refresh token.
    Rotated(SessionRecord),
    /// Refused; for [`Reason::Reused`] the whole session is now revoked.
    Refused(Reason),
}

/// A session revocation, in the order they were made (by any process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub seq: i64,
    pub session_id: String,
    pub reason: Reason,
}

/// Within this many seconds of its use, the refresh token spent last may be
/// presented again as a retry (a lost response), as long as its successor
/// was never used.
pub const REFRESH_RETRY_WINDOW_SECS: i64 = 60;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<UserRecord>;
    async fn set_password(&self, username: &str, password_hash: &str) -> Result<bool>;
    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>>;
    async fn list_users(&self) -> Result<Vec<UserRecord>>;

    /// A new session with its first refresh token.
    async fn create_session(
        &self,
        user: &UserRecord,
        session_id: &str,
        refresh: TokenHash,
        now: i64,
        expires_at: i64,
    ) -> Result<SessionRecord>;
    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>>;
    /// Rotates `presented` to `next`, with reuse detection and the retry
    /// exception of PROTOCOL.md.
    async fn refresh(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: i64,
    ) -> Result<RefreshOutcome>;
    /// Revokes one session; true if it was live until now.
    async fn revoke_session(&self, session_id: &str, reason: Reason, now: i64) -> Result<bool>;
    /// Revokes the session a refresh token (live or spent) belongs to.
    async fn revoke_by_refresh(&self, token: TokenHash, now: i64) -> Result<Option<String>>;
    /// Revokes every live session of a user; None if there is no such user.
    async fn revoke_user(&self, username: &str, reason: Reason, now: i64) -> Result<Option<usize>>;
    /// Revocations after `seq`, oldest first.
    async fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>>;
    /// The newest revocation's `seq` (0 if none).
    async fn last_revocation(&self) -> Result<i64>;

    /// Every signing key, oldest first.
    async fn keys(&self) -> Result<Vec<KeyRecord>>;
    /// Adds `key` as the current key and retires the previous one at `now`.
    async fn rotate_key(&self, key: KeyRecord, now: i64) -> Result<()>;
    /// Changes whenever the key set changes.
    async fn keys_version(&self) -> Result<i64>;

    /// Applies a validated push in order, in one durable transaction.
    async fn push(&self, user_id: &str, ops: Vec<Op>, now: i64) -> Result<PushResponse>;
    /// The user's changes after `since`, oldest first.
    async fn pull(&self, user_id: &str, since: i64, limit: u32) -> Result<PullResponse>;
}
