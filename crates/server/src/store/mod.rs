//! Storage behind one trait, so that no handler knows which backend holds
//! the state: SQLite (one file, zero setup: the default) or PostgreSQL
//! (any number of server instances on one database). `--db` says which
//! ([`Location`]). Every method is one transaction.

mod backup;
#[cfg(test)]
mod conformance;
mod migrate;
mod notes;
mod postgres;
mod sqlite;

use async_trait::async_trait;
use latchkey_protocol::sync::MAX_PUSH_ANSWER_NOTES_BYTES;
use latchkey_protocol::{NoteVersion, Op, OpResult, PullResponse, PushResponse, Reason};
use uuid::Uuid;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use backup::{BackupReport, sqlite_backup};
pub use migrate::{MigrateReport, TableSum, migrate_store};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where the server keeps its state, as `--db` names it.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by a `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Location {
    /// A URL of the `postgres` or `postgresql` scheme names a PostgreSQL
    /// database; anything else is the path of a SQLite file.
    pub fn parse(db: OsString) -> Self {
        match db.to_str() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Location::Postgres(url.to_owned())
            }
            _ => Location::Sqlite(db.into()),
        }
    }

    /// The SQLite file, if that is what this is.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Location::Sqlite(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }
}

/// The path, or the URL with its password left out: fit for messages and
/// logs.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&without_password(url)),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

/// `url` with the password of its user part and of any `password=` option
/// replaced by `***`.
fn without_password(url: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (url, None),
    };
    let mut out = match main.split_once("://") {
        Some((scheme, rest)) => {
            let rest = match rest.rsplit_once('@') {
                Some((user, host)) => match user.split_once(':') {
                    Some((name, _)) => format!("{name}:***@{host}"),
                    None => rest.to_owned(),
                },
                None => rest.to_owned(),
            };
            format!("{scheme}://{rest}")
        }
        None => main.to_owned(),
    };
    if let Some(query) = query {
        let options: Vec<&str> = query
            .split('&')
            .map(|o| {
                if o.starts_with("password=") {
                    "password=***"
                } else {
                    o
                }
            })
            .collect();
        out.push('?');
        out.push_str(&options.join("&"));
    }
    out
}

/// Opens (creating if need be) and migrates the store `at` names.
pub async fn open(at: &Location) -> Result<Arc<dyn Store>> {
    match at {
        Location::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path)).await??;
            Ok(Arc::new(store))
        }
        Location::Postgres(url) => Ok(Arc::new(PgStore::open(url).await?)),
    }
}

/// A store's failure. Every variant but [`StoreError::Unavailable`] is the
/// server's own problem (answered 500); that one passes (answered 503).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `user add` of a name that is taken.
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    /// The database could not be opened: path, permissions, not a database;
    /// for PostgreSQL a bad URL, or a server that cannot be reached or
    /// refuses us. `path` never shows a password.
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database is from a newer server.
    #[error("the database schema version {found} is newer than this server's ({supported})")]
    TooNew { found: i64, supported: i64 },
    /// `migrate-store` from a SQLite file that is a database, but not a
    /// Latchkey server's.
    #[error("{path} is not a Latchkey server's database (it has no Latchkey tables)")]
    NotLatchkey { path: String },
    /// `migrate-store` into a database holding rows already (`found` says
    /// how many, by table), without `--replace`. `target` never shows a
    /// password.
    #[error(
        "{target} already holds data ({found}); add --replace to delete it and copy the \
         source in its place"
    )]
    TargetNotEmpty { target: String, found: String },
    /// `migrate-store`'s check found a table whose copy differs from the
    /// source; the copy was rolled back.
    #[error("the copy of table {table} does not match the source ({detail}); nothing was written")]
    CopyMismatch { table: &'static str, detail: String },
    /// Any other SQLite failure.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// Any other PostgreSQL failure (a query the database refused).
    #[error("database error: {}", postgres::describe(.0))]
    Pg(tokio_postgres::Error),
    /// PostgreSQL cannot be reached now: down, restarting, failing over,
    /// refusing connections, or no pooled connection came free in time.
    /// Worth retrying later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
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

impl UserRecord {
    /// A user about to be added, with a new id.
    fn new(username: &str, password_hash: &str, now: i64) -> Self {
        Self {
            id: Uuid::new_v4().to_string(),
            username: username.to_owned(),
            password_hash: password_hash.to_owned(),
            created_at: now,
        }
    }
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

impl SessionRecord {
    /// A session of `user` about to begin.
    fn new(user: &UserRecord, session_id: &str, now: i64, expires_at: i64) -> Self {
        Self {
            id: session_id.to_owned(),
            user_id: user.id.clone(),
            username: user.username.clone(),
            created_at: now,
            expires_at,
            revoked: None,
        }
    }
}

/// A live session as the session list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionListing {
    pub id: String,
    pub device_name: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
}

/// What `user delete` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedUser {
    pub notes: usize,
    /// Kept earlier versions of notes (history).
    pub versions: usize,
    pub op_results: usize,
    pub sessions: usize,
}

/// A session's `last_seen_at` moves at most this often, in seconds.
pub const LAST_SEEN_STEP_SECS: i64 = 60;

/// An Ed25519 signing key as stored.
#[derive(Clone)]
pub struct KeyRecord {
    pub kid: String,
    pub secret: [u8; 32],
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl KeyRecord {
    /// A key as a store read it; its secret must be 32 bytes.
    fn stored(
        kid: String,
        secret: Vec<u8>,
        created_at: i64,
        retired_at: Option<i64>,
    ) -> Result<Self> {
        let secret = secret
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("signing key {kid}")))?;
        Ok(Self {
            kid,
            secret,
            created_at,
            retired_at,
        })
    }
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

/// What a pull found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// A page of changes (possibly empty).
    Page(PullResponse),
    /// The cursor is past the user's latest rev, `latest`.
    CursorAhead { latest: i64 },
}

/// Keeps a push answer bounded (PROTOCOL.md v1.1, "Sync edge cases"):
/// `server_note`s are admitted in result order until the next one would take
/// their JSON past [`MAX_PUSH_ANSWER_NOTES_BYTES`]; that one and every later
/// one are left out.
#[derive(Debug)]
pub struct ServerNoteBudget {
    left: usize,
    exhausted: bool,
}

impl Default for ServerNoteBudget {
    fn default() -> Self {
        Self::new(MAX_PUSH_ANSWER_NOTES_BYTES)
    }
}

impl ServerNoteBudget {
    pub fn new(bytes: usize) -> Self {
        Self {
            left: bytes,
            exhausted: false,
        }
    }

    /// Keeps `result`'s `server_note` if it still fits, else drops it.
    pub fn admit(&mut self, result: &mut OpResult) {
        let Some(note) = &result.server_note else {
            return;
        };
        if !self.exhausted {
            let size = json_len(note);
            if size <= self.left {
                self.left -= size;
                return;
            }
            self.exhausted = true;
        }
        result.server_note = None;
    }
}

/// The length of `value`'s compact JSON, as the answer will carry it,
/// without building it.
fn json_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a plain struct to a sink that never fails cannot fail;
    // should it, the note counts as too big to send.
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// A session revocation, in the order they were made (by any process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub seq: i64,
    pub session_id: String,
    pub reason: Reason,
}

impl Revocation {
    /// A revocation as a store read it (an unknown reason is a plain
    /// revocation).
    fn stored(seq: i64, session_id: String, reason: String) -> Self {
        Self {
            seq,
            session_id,
            reason: notes::reason_from_db(Some(reason)).unwrap_or(Reason::Revoked),
        }
    }
}

/// A user's latest rev moved (by a push through any process); `seq`
/// numbers these changes in the order they committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevChange {
    pub seq: i64,
    pub user_id: String,
    /// The user's latest rev after that push.
    pub rev: i64,
}

/// A sign-in attempt's key in the throttle: the username's SHA-256 (fixed
/// size whatever the name) and the client address it is counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptKey {
    pub user: [u8; 32],
    pub address: String,
}

/// The throttle's limits: failures counted within `window` seconds, per
/// user and address, and per address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    pub window: i64,
    pub per_user: usize,
    pub per_address: usize,
}

/// What an attempt found when it asked to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStart {
    /// It started: it counts against the limits until it ends.
    Started(i64),
    /// The limits are reached by failures: try again in this many seconds.
    Blocked(u64),
    /// The limits are reached only with attempts still in flight: wait.
    InFlight,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A wrong password (or an attempt dropped half way): counted for the
    /// window, for the user at that address and for the address.
    Failed,
    /// Signed in: not a failure, and the user's earlier failures from that
    /// address are forgiven (the address's are not).
    Succeeded,
    /// No password was checked (the server was busy): taken back.
    Abandoned,
}

/// What a new attempt finds counted in the window: the start times of the
/// failures that count (any order) and the attempts in flight, for the
/// user at the address and for the address. Both stores count; these
/// rules decide.
#[derive(Debug, Default)]
pub struct AttemptCounts {
    pub user_failed: Vec<i64>,
    pub user_in_flight: usize,
    pub address_failed: Vec<i64>,
    pub address_in_flight: usize,
}

impl AttemptCounts {
    /// What is in the way of a new attempt: the longer block, else a wait;
    /// `None`: nothing.
    pub fn verdict(mut self, limits: AttemptLimits, now: i64) -> Option<AttemptStart> {
        attempt_verdict(
            attempt_check(
                &mut self.user_failed,
                self.user_in_flight,
                limits.per_user,
                limits.window,
                now,
            ),
            attempt_check(
                &mut self.address_failed,
                self.address_in_flight,
                limits.per_address,
                limits.window,
                now,
            ),
        )
    }
}

/// What an attempt finds at one counter: the start times of the failures
/// that count there (any order) and the attempts in flight, against
/// `limit`. `None`: nothing in the way.
fn attempt_check(
    failures: &mut [i64],
    in_flight: usize,
    limit: usize,
    window: i64,
    now: i64,
) -> Option<AttemptStart> {
    failures.sort_unstable();
    let failed = failures.len();
    if failed >= limit {
        // The oldest failure that keeps the count at the limit.
        let oldest_blocking = failures[failed - limit];
        return Some(AttemptStart::Blocked(
            (oldest_blocking + window - now).max(1) as u64,
        ));
    }
    (failed + in_flight >= limit).then_some(AttemptStart::InFlight)
}

/// Both counters' findings as one: the longer block, else a wait.
fn attempt_verdict(
    user: Option<AttemptStart>,
    address: Option<AttemptStart>,
) -> Option<AttemptStart> {
    use AttemptStart::{Blocked, InFlight};
    match (user, address) {
        (Some(Blocked(a)), Some(Blocked(b))) => Some(Blocked(a.max(b))),
        (Some(Blocked(a)), _) | (_, Some(Blocked(a))) => Some(Blocked(a)),
        (Some(InFlight), _) | (_, Some(InFlight)) => Some(InFlight),
        _ => None,
    }
}

/// A history answer holds versions, newest first, until their titles and
/// bodies pass about this many bytes: 50 versions of a 4 MiB body would be
/// 200 MiB. The versions left out are older than every one sent.
pub const HISTORY_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Within this many seconds of its use, the refresh token spent last may be
/// presented again as a retry (a lost response), as long as its successor
/// was never used. The successor is then retired: presented later, it is
/// reuse.
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

    /// A new session with its first refresh token, signed in from the
    /// device that called itself `device_name`.
    async fn create_session(
        &self,
        user: &UserRecord,
        session_id: &str,
        refresh: TokenHash,
        device_name: Option<&str>,
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
    /// Moves the session's `last_seen_at` to `now`, unless it moved within
    /// [`LAST_SEEN_STEP_SECS`] (a refresh moves it by itself), and says
    /// whether the database holds the session revoked (None: it does not;
    /// a session gone with its user is revoked). The reconnect check asks
    /// the database, so that a revocation made through any instance is
    /// seen there at once, not when this instance hears of it.
    async fn touch_session(&self, session_id: &str, now: i64) -> Result<Option<Reason>>;
    /// The user's sessions neither revoked nor expired, most recently seen
    /// first.
    async fn live_sessions(&self, user_id: &str, now: i64) -> Result<Vec<SessionListing>>;
    /// Revokes `session_id` if it is a live session of `user_id`; true if
    /// it was (and nothing is revoked otherwise).
    async fn revoke_own_session(&self, user_id: &str, session_id: &str, now: i64) -> Result<bool>;
    /// Revokes every live session of `user_id` but `keep`; returns their ids.
    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: &str,
        now: i64,
    ) -> Result<Vec<String>>;
    /// Replaces the user's password hash and, in the same transaction,
    /// revokes every live session of theirs but `keep`; returns their ids.
    async fn replace_password(
        &self,
        user_id: &str,
        password_hash: &str,
        keep: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>>;
    /// Deletes a user with their notes, history, op results and sessions
    /// (revoking those first); None if there is no such user.
    async fn delete_user(&self, username: &str, now: i64) -> Result<Option<DeletedUser>>;
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

    /// Applies a validated push in order, in one durable transaction. Every
    /// note version an applied op replaces is kept (the last
    /// [`HISTORY_KEPT_VERSIONS`](latchkey_protocol::sync::HISTORY_KEPT_VERSIONS)
    /// of each note), and a push that moves the user's rev is numbered for
    /// [`Store::rev_changes_since`].
    async fn push(&self, user_id: &str, ops: Vec<Op>, now: i64) -> Result<PushResponse>;
    /// The user's changes after `since`, oldest first.
    async fn pull(&self, user_id: &str, since: i64, limit: u32) -> Result<PullOutcome>;
    /// Deletes at most `batch` op results recorded before `before`; returns
    /// how many went. A resend of a pruned op id is then a new op.
    async fn prune_ops(&self, before: i64, batch: usize) -> Result<usize>;

    /// The user's latest rev (0 if they have none, or no such user).
    async fn latest_rev(&self, user_id: &str) -> Result<i64>;
    /// At most `limit` users whose rev moved after change `seq`, with their
    /// latest rev, oldest change first.
    async fn rev_changes_since(&self, seq: i64, limit: usize) -> Result<Vec<RevChange>>;
    /// The newest rev change's `seq` (0 if none).
    async fn last_rev_change(&self) -> Result<i64>;
    /// The earlier versions of one of the user's notes, newest first, the
    /// current one left out, within [`HISTORY_ANSWER_BYTES`]; None if the
    /// user has no such note.
    async fn history(&self, user_id: &str, note_id: Uuid) -> Result<Option<Vec<NoteVersion>>>;

    /// Starts a sign-in attempt of `key` at `now` unless `limits` are
    /// reached, in one transaction: attempts through any number of server
    /// instances on this store share one budget.
    async fn begin_attempt(
        &self,
        key: &AttemptKey,
        limits: AttemptLimits,
        now: i64,
    ) -> Result<AttemptStart>;
    /// Ends attempt `id` (nothing if it has ended, or was pruned).
    async fn end_attempt(&self, id: i64, outcome: AttemptOutcome) -> Result<()>;
    /// Deletes the attempts started before `before`; returns how many went.
    async fn prune_attempts(&self, before: i64) -> Result<usize>;

    /// News of the changes other processes commit to this store, so that
    /// [`Store::revocations_since`], [`Store::rev_changes_since`] and
    /// [`Store::keys_version`] are read at once rather than at the next
    /// poll; `None` (the default) when the store has no such signal and
    /// only polling finds them.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<Changes>> {
        None
    }
}

/// What [`Store::changes`] says: whether the store is listening now, and
/// a count that moves when there may be something new to read (a
/// notification, or listening again after a break, in which anything may
/// have been missed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub listening: bool,
    pub heard: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_protocol::{Change, OpStatus};
    use uuid::Uuid;

    fn conflict(body_len: usize) -> OpResult {
        OpResult {
            op_id: Uuid::nil(),
            status: OpStatus::Conflict,
            note_id: Uuid::nil(),
            rev: 1,
            original_status: None,
            conflict_copy_id: None,
            copy_rev: None,
            server_note: Some(Change {
                note_id: Uuid::nil(),
                rev: 1,
                title: String::new(),
                body: "x".repeat(body_len),
                deleted: false,
                updated_at: 1,
                conflict_of: None,
            }),
        }
    }

    #[test]
    fn the_first_note_past_the_budget_and_every_later_one_are_left_out() {
        let size = json_len(conflict(100).server_note.as_ref().unwrap());
        assert_eq!(
            size,
            serde_json::to_vec(conflict(100).server_note.as_ref().unwrap())
                .unwrap()
                .len()
        );
        let small = json_len(conflict(1).server_note.as_ref().unwrap());
        let mut budget = ServerNoteBudget::new(2 * size + small);
        let mut results = [conflict(100), conflict(100), conflict(50), conflict(1)];
        for r in &mut results {
            budget.admit(r);
        }
        let kept: Vec<bool> = results.iter().map(|r| r.server_note.is_some()).collect();
        // The last one would fit in what is left, but comes after one that
        // did not: left out too.
        assert_eq!(kept, [true, true, false, false]);
        // Exactly filling the budget is allowed.
        let mut budget = ServerNoteBudget::new(size);
        let mut r = conflict(100);
        budget.admit(&mut r);
        assert!(r.server_note.is_some());
    }
}
