//! The SQLite backend: one file, WAL, `synchronous=FULL` (an acknowledged
//! push survives a power cut), versioned migrations.
//!
//! All writes go through one connection behind a mutex, so this process
//! never races itself for the write lock (no `SQLITE_BUSY` under load) and
//! each user's revs commit in order; reads use a small pool of their own
//! connections. Other processes (the CLI) wait on `busy_timeout`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use latchkey_protocol::{
    Change, NoteVersion, Op, OpResult, PullResponse, PushResponse, Reason,
    sync::{HISTORY_KEPT_VERSIONS, PULL_PAGE_BYTES},
};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use uuid::Uuid;

use super::notes::{self, OpRow, parse_note_id, reason_from_db};
use super::{
    AttemptCounts, AttemptKey, AttemptLimits, AttemptOutcome, AttemptStart, DeletedUser,
    HISTORY_ANSWER_BYTES, KeyRecord, LAST_SEEN_STEP_SECS, PullOutcome, REFRESH_RETRY_WINDOW_SECS,
    RefreshOutcome, Result, RevChange, Revocation, ServerNoteBudget, SessionListing, SessionRecord,
    Store, StoreError, TokenHash, UserRecord,
};

/// The migrations, in order; `PRAGMA user_version` counts those applied.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_rev      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users(id),
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE TABLE refresh_tokens (
    hash       BLOB PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    parent     BLOB,
    created_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);
CREATE INDEX refresh_tokens_parent ON refresh_tokens(parent);
CREATE TABLE revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         INTEGER NOT NULL
);
CREATE TABLE signing_keys (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kid        TEXT NOT NULL UNIQUE,
    secret     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);
CREATE TABLE notes (
    user_id     TEXT NOT NULL REFERENCES users(id),
    note_id     TEXT NOT NULL,
    rev         INTEGER NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    deleted     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    conflict_of TEXT,
    PRIMARY KEY (user_id, note_id)
);
CREATE UNIQUE INDEX notes_user_rev ON notes(user_id, rev);
CREATE TABLE ops (
    user_id    TEXT NOT NULL,
    op_id      TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, op_id)
) WITHOUT ROWID;
"#,
    // An op's result as columns, not a JSON copy of the answer: a third of
    // the bytes a push writes. The server's note is kept for conflicts only
    // (a duplicate of a conflict answers it again).
    r#"
CREATE TABLE op_results (
    user_id          TEXT NOT NULL,
    op_id            TEXT NOT NULL,
    note_id          TEXT NOT NULL,
    rev              INTEGER NOT NULL,
    conflict         INTEGER NOT NULL,
    conflict_copy_id TEXT,
    copy_rev         INTEGER,
    server_note      TEXT,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (user_id, op_id)
) WITHOUT ROWID;
INSERT INTO op_results
SELECT user_id, op_id, result ->> 'note_id', result ->> 'rev',
       result ->> 'status' = 'conflict', result ->> 'conflict_copy_id', result ->> 'copy_rev',
       CASE WHEN result ->> 'status' = 'conflict' THEN result -> 'server_note' END, created_at
FROM ops;
DROP TABLE ops;
ALTER TABLE op_results RENAME TO ops;
"#,
    // v1.1: a successor retired by a retry stays, so that presenting it
    // later is seen as reuse; op results are pruned by age.
    r#"
ALTER TABLE refresh_tokens ADD COLUMN retired_at INTEGER;
CREATE INDEX ops_created ON ops(created_at);
"#,
    // v1.1: note history (the versions applied ops replaced), and pushes
    // numbered so that other instances learn of them for live updates.
    // A rowid table, not WITHOUT ROWID: a version may carry a 4 MiB body.
    r#"
CREATE TABLE note_versions (
    user_id    TEXT NOT NULL,
    note_id    TEXT NOT NULL,
    rev        INTEGER NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    deleted    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX note_versions_note ON note_versions(user_id, note_id, rev);
ALTER TABLE users ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX users_change_seq ON users(change_seq);
"#,
    // v1.1: devices and sessions. A session from before knows no device,
    // and was last seen when it began.
    r#"
ALTER TABLE sessions ADD COLUMN device_name TEXT;
ALTER TABLE sessions ADD COLUMN last_seen_at INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET last_seen_at = created_at;
"#,
    // Sign-in throttling in the store, shared by every process on it.
    // state: 0 in flight, 1 failed, 2 failed and then forgiven for the user
    // (a success), still counted for the address.
    r#"
CREATE TABLE login_attempts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_key   BLOB NOT NULL,
    address    TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    state      INTEGER NOT NULL
);
CREATE INDEX login_attempts_user ON login_attempts(user_key, address);
CREATE INDEX login_attempts_address ON login_attempts(address);
CREATE INDEX login_attempts_started ON login_attempts(started_at);
"#,
];

pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Wakes the checkpointer (see [`checkpointer`]) after a commit.
    wake_checkpointer: std::sync::mpsc::SyncSender<()>,
}

impl SqliteStore {
    /// Opens (creating, mode 0600) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        create_private(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(source),
        };
        let mut conn = connect(path, false).map_err(open_err)?;
        migrate(&mut conn).map_err(|e| match e {
            StoreError::Db(source) => open_err(source),
            other => other,
        })?;
        conn.wal_hook(Some(note_wal_pages));
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let (wake_checkpointer, wake) = std::sync::mpsc::sync_channel(1);
        let checkpoint_path = path.to_owned();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpointer(&checkpoint_path, &wake))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: Box::new(e),
            })?;
        Ok(Self {
            path: path.to_owned(),
            writer: Arc::new(Mutex::new(conn)),
            readers: Arc::new(Mutex::new(Vec::new())),
            wake_checkpointer,
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        let wake_checkpointer = self.wake_checkpointer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            match WAL_PAGES.replace(0) {
                BACKSTOP_CHECKPOINT_PAGES.. => checkpoint(&conn),
                // Full: a wake-up is already pending, which is as good.
                CHECKPOINT_PAGES.. => drop(wake_checkpointer.try_send(())),
                _ => {}
            }
            Ok(out)
        })
        .await?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => connect(&path, true)?,
            };
            let out = f(&conn);
            let mut pool = readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 16 {
                pool.push(conn);
            }
            out
        })
        .await?
    }
}

/// The WAL size (pages) at which the checkpointer is woken: SQLite's own
/// automatic checkpoint threshold.
const CHECKPOINT_PAGES: i32 = 1_000;
/// Past this (~40 MiB), when commits never pause long enough for the
/// checkpointer to catch up, the writer checkpoints itself.
const BACKSTOP_CHECKPOINT_PAGES: i32 = 10_000;
/// After a burst, the WAL file is cut back to this when it restarts.
const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

thread_local! {
    /// The WAL's size in pages after the last commit on this thread.
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// SQLite's WAL hook (which replaces its automatic checkpoint): keeps the
/// WAL's size for [`SqliteStore::write`] to act on.
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// Copies committed pages from the WAL into the database on a connection of
/// its own, so that no request waits for it (SQLite's automatic checkpoint
/// runs inside the commit that crosses 1,000 pages: one push in two of a
/// large sync paid for it). Ends when the store is dropped.
fn checkpointer(path: &Path, wake: &std::sync::mpsc::Receiver<()>) {
    let mut conn = None;
    while wake.recv().is_ok() {
        if conn.is_none() {
            conn = connect(path, false)
                .inspect_err(|e| tracing::warn!("checkpoint: cannot open the database: {e}"))
                .ok();
        }
        if let Some(c) = &conn {
            checkpoint(c);
        }
    }
}

/// A checkpoint that waits for nobody: it copies what no reader still needs.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!("checkpoint failed (the next one retries): {e}");
    }
}

/// Creates the file with mode 0600 if it does not exist, so that neither
/// the database nor its WAL (which SQLite gives the same mode) is ever
/// readable by other users.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).map(drop)
}

fn connect(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Reading the schema fails here, with a clear error, on a non-database.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::TooNew {
            found: version,
            supported,
        });
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}

const SESSION_SELECT: &str = "SELECT s.id, s.user_id, u.username, s.created_at, s.expires_at, \
     s.revoked_reason FROM sessions s JOIN users u ON u.id = s.user_id";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        user_id: r.get(1)?,
        username: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        revoked: reason_from_db(r.get(5)?),
    })
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: r.get(0)?,
        username: r.get(1)?,
        password_hash: r.get(2)?,
        created_at: r.get(3)?,
    })
}

fn get_session(conn: &Connection, id: &str) -> Result<Option<SessionRecord>> {
    Ok(conn
        .query_row(
            &format!("{SESSION_SELECT} WHERE s.id = ?1"),
            [id],
            session_row,
        )
        .optional()?)
}

fn revoke(tx: &Transaction<'_>, session_id: &str, reason: Reason, now: i64) -> Result<bool> {
    let changed = tx.execute(
        "UPDATE sessions SET revoked_at = ?2, revoked_reason = ?3 \
         WHERE id = ?1 AND revoked_at IS NULL",
        params![session_id, now, reason.as_str()],
    )?;
    if changed > 0 {
        tx.execute(
            "INSERT INTO revocations (session_id, reason, at) VALUES (?1, ?2, ?3)",
            params![session_id, reason.as_str(), now],
        )?;
    }
    Ok(changed > 0)
}

/// Moves a session's `last_seen_at` to `now`, unless it moved less than
/// [`LAST_SEEN_STEP_SECS`] ago.
fn touch(tx: &Transaction<'_>, session_id: &str, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE sessions SET last_seen_at = ?2 WHERE id = ?1 AND last_seen_at < ?2 - ?3",
        params![session_id, now, LAST_SEEN_STEP_SECS],
    )?;
    Ok(())
}

/// The id of the user named `username`, if there is one.
fn user_id_of(tx: &Transaction<'_>, username: &str) -> Result<Option<String>> {
    Ok(tx
        .query_row(
            "SELECT id FROM users WHERE username = ?1",
            [username],
            |r| r.get(0),
        )
        .optional()?)
}

/// Revokes every live session of `user_id` but `keep`; returns their ids.
fn revoke_all_but(
    tx: &Transaction<'_>,
    user_id: &str,
    keep: Option<&str>,
    reason: Reason,
    now: i64,
) -> Result<Vec<String>> {
    let sids: Vec<String> = tx
        .prepare(
            "SELECT id FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL \
             AND expires_at > ?2 AND id IS NOT ?3",
        )?
        .query_map(params![user_id, now, keep], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for sid in &sids {
        revoke(tx, sid, reason, now)?;
    }
    Ok(sids)
}

fn load_note(tx: &Transaction<'_>, user_id: &str, note_id: &str) -> Result<Option<Change>> {
    tx.prepare_cached(
        "SELECT note_id, rev, title, body, deleted, updated_at, conflict_of \
         FROM notes WHERE user_id = ?1 AND note_id = ?2",
    )?
    .query_row(params![user_id, note_id], change_row)
    .optional()?
    .transpose()
}

fn note_exists(tx: &Transaction<'_>, user_id: &str, note_id: &str) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM notes WHERE user_id = ?1 AND note_id = ?2")?
        .query_row(params![user_id, note_id], |_| Ok(()))
        .optional()?
        .is_some())
}

fn change_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Change>> {
    let note_id: String = r.get(0)?;
    let conflict_of: Option<String> = r.get(6)?;
    let change = (|| {
        Ok(Change {
            note_id: parse_note_id(&note_id)?,
            rev: r.get(1)?,
            title: r.get(2)?,
            body: r.get(3)?,
            deleted: r.get(4)?,
            updated_at: r.get(5)?,
            conflict_of: conflict_of.as_deref().map(parse_note_id).transpose()?,
        })
    })();
    Ok(change)
}

fn write_note(tx: &Transaction<'_>, user_id: &str, note: &Change) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO notes (user_id, note_id, rev, title, body, deleted, updated_at, conflict_of) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (user_id, note_id) DO UPDATE SET rev = excluded.rev, title = excluded.title, \
         body = excluded.body, deleted = excluded.deleted, updated_at = excluded.updated_at",
    )?
    .execute(params![
        user_id,
        note.note_id.to_string(),
        note.rev,
        note.title,
        note.body,
        note.deleted,
        note.updated_at,
        note.conflict_of.map(|u| u.to_string()),
    ])?;
    Ok(())
}

/// Keeps `replaced`, a version an applied op replaces, in the note's
/// history, and forgets the note's versions past the last
/// [`HISTORY_KEPT_VERSIONS`] (a walk of that many index entries).
fn keep_version(tx: &Transaction<'_>, user_id: &str, replaced: &Change) -> Result<()> {
    let note_id = replaced.note_id.to_string();
    tx.prepare_cached(
        "INSERT INTO note_versions (user_id, note_id, rev, title, body, deleted, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        user_id,
        note_id,
        replaced.rev,
        replaced.title,
        replaced.body,
        replaced.deleted,
        replaced.updated_at,
    ])?;
    // The subquery finds the oldest rev to keep; with fewer versions it is
    // NULL and nothing goes.
    tx.prepare_cached(
        "DELETE FROM note_versions WHERE user_id = ?1 AND note_id = ?2 AND rev < \
         (SELECT rev FROM note_versions WHERE user_id = ?1 AND note_id = ?2 \
          ORDER BY rev DESC LIMIT 1 OFFSET ?3)",
    )?
    .execute(params![user_id, note_id, HISTORY_KEPT_VERSIONS as i64 - 1])?;
    Ok(())
}

/// The answer to an op this user pushed before: its first result again,
/// as a duplicate.
fn seen_op(tx: &Transaction<'_>, user_id: &str, op_id: &str) -> Result<Option<OpResult>> {
    tx.prepare_cached(
        "SELECT note_id, rev, conflict, conflict_copy_id, copy_rev, server_note \
         FROM ops WHERE user_id = ?1 AND op_id = ?2",
    )?
    .query_row(params![user_id, op_id], |r| {
        Ok(OpRow {
            note_id: r.get(0)?,
            rev: r.get(1)?,
            conflict: r.get(2)?,
            conflict_copy_id: r.get(3)?,
            copy_rev: r.get(4)?,
            server_note: r.get(5)?,
        })
    })
    .optional()?
    .map(|row| row.duplicate(op_id))
    .transpose()
}

/// Keeps an op's result, so that a retried push gets the same answer.
fn record_op(
    tx: &Transaction<'_>,
    user_id: &str,
    op_id: &str,
    result: &OpResult,
    now: i64,
) -> Result<()> {
    let row = OpRow::of(op_id, result)?;
    tx.prepare_cached(
        "INSERT INTO ops (user_id, op_id, note_id, rev, conflict, conflict_copy_id, copy_rev, \
         server_note, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        user_id,
        op_id,
        row.note_id,
        row.rev,
        row.conflict,
        row.conflict_copy_id,
        row.copy_rev,
        row.server_note,
        now,
    ])?;
    Ok(())
}

/// Applies one op (not seen before) and says what happened.
fn apply_op(
    tx: &Transaction<'_>,
    user_id: &str,
    op: &Op,
    last_rev: &mut i64,
    now: i64,
) -> Result<OpResult> {
    let current = load_note(tx, user_id, &op.note_id().to_string())?;
    let copy_taken = |id: Uuid| note_exists(tx, user_id, &id.to_string());
    let applied = notes::apply_op(op, current, copy_taken, last_rev, now)?;
    if let Some(replaced) = &applied.replaced {
        keep_version(tx, user_id, replaced)?;
    }
    if let Some(note) = &applied.written {
        write_note(tx, user_id, note)?;
    }
    Ok(applied.result)
}

/// [`Store::refresh`] in its transaction: rotates `presented` to `next`,
/// with reuse detection and the retry exception.
fn rotate_refresh(
    tx: &Transaction<'_>,
    presented: TokenHash,
    next: TokenHash,
    now: i64,
) -> Result<RefreshOutcome> {
    let row: Option<(String, Option<i64>, Option<i64>)> = tx
        .query_row(
            "SELECT session_id, used_at, retired_at FROM refresh_tokens WHERE hash = ?1",
            [&presented[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((sid, used_at, retired_at)) = row else {
        return Ok(RefreshOutcome::Refused(Reason::Invalid));
    };
    let Some(session) = get_session(tx, &sid)? else {
        return Ok(RefreshOutcome::Refused(Reason::Invalid));
    };
    if let Some(reason) = session.revoked {
        return Ok(RefreshOutcome::Refused(reason));
    }
    if session.expires_at <= now {
        return Ok(RefreshOutcome::Refused(Reason::Expired));
    }
    // Retired by a retry of its parent, so someone else went on with the
    // session: two parties hold it.
    if retired_at.is_some() || !spend(tx, &presented, used_at, now)? {
        revoke(tx, &sid, Reason::Reused, now)?;
        return Ok(RefreshOutcome::Refused(Reason::Reused));
    }
    tx.execute(
        "INSERT INTO refresh_tokens (hash, session_id, parent, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![&next[..], sid, &presented[..], now],
    )?;
    touch(tx, &sid, now)?;
    Ok(RefreshOutcome::Rotated(session))
}

/// Spends the live refresh token `presented` (never used: `used_at` is
/// None). One already spent may be spent again as a retry, which retires
/// its successor; false when it may not: that is reuse.
fn spend(
    tx: &Transaction<'_>,
    presented: &TokenHash,
    used_at: Option<i64>,
    now: i64,
) -> Result<bool> {
    let Some(used_at) = used_at else {
        tx.execute(
            "UPDATE refresh_tokens SET used_at = ?2 WHERE hash = ?1",
            params![&presented[..], now],
        )?;
        return Ok(true);
    };
    // Spent. A retry only if it is the token spent last, its successor was
    // never used, and it is recent.
    let child: Option<(Vec<u8>, Option<i64>)> = tx
        .query_row(
            "SELECT hash, used_at FROM refresh_tokens WHERE parent = ?1 AND retired_at IS NULL",
            [&presented[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match child {
        Some((child, None)) if now - used_at <= REFRESH_RETRY_WINDOW_SECS => {
            tx.execute(
                "UPDATE refresh_tokens SET retired_at = ?2 WHERE hash = ?1",
                params![child, now],
            )?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<UserRecord> {
        let user = UserRecord::new(username, password_hash, now);
        let u = user.clone();
        self.write(move |tx| {
            let taken = tx
                .query_row("SELECT 1 FROM users WHERE username = ?1", [&u.username], |_| Ok(()))
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::UserExists(u.username));
            }
            tx.execute(
                "INSERT INTO users (id, username, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![u.id, u.username, u.password_hash, u.created_at],
            )?;
            Ok(())
        })
        .await?;
        Ok(user)
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> Result<bool> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE username = ?1",
                params![username, hash],
            )? > 0)
        })
        .await
    }

    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>> {
        let username = username.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT id, username, password_hash, created_at FROM users WHERE username = ?1",
                [username],
                user_row,
            )
            .optional()?)
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, username, password_hash, created_at FROM users ORDER BY username",
            )?;
            let rows = stmt
                .query_map([], user_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
        .await
    }

    async fn create_session(
        &self,
        user: &UserRecord,
        session_id: &str,
        refresh: TokenHash,
        device_name: Option<&str>,
        now: i64,
        expires_at: i64,
    ) -> Result<SessionRecord> {
        let device_name = device_name.map(str::to_owned);
        let record = SessionRecord::new(user, session_id, now, expires_at);
        let r = record.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO sessions (id, user_id, created_at, expires_at, device_name, \
                 last_seen_at) VALUES (?1, ?2, ?3, ?4, ?5, ?3)",
                params![r.id, r.user_id, r.created_at, r.expires_at, device_name],
            )?;
            tx.execute(
                "INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES (?1, ?2, ?3)",
                params![&refresh[..], r.id, now],
            )?;
            Ok(())
        })
        .await?;
        Ok(record)
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        let id = session_id.to_owned();
        self.read(move |c| get_session(c, &id)).await
    }

    async fn refresh(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: i64,
    ) -> Result<RefreshOutcome> {
        self.write(move |tx| rotate_refresh(tx, presented, next, now))
            .await
    }

    async fn revoke_session(&self, session_id: &str, reason: Reason, now: i64) -> Result<bool> {
        let id = session_id.to_owned();
        self.write(move |tx| revoke(tx, &id, reason, now)).await
    }

    async fn revoke_by_refresh(&self, token: TokenHash, now: i64) -> Result<Option<String>> {
        self.write(move |tx| {
            let sid: Option<String> = tx
                .query_row(
                    "SELECT session_id FROM refresh_tokens WHERE hash = ?1",
                    [&token[..]],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(sid) = &sid {
                revoke(tx, sid, Reason::Revoked, now)?;
            }
            Ok(sid)
        })
        .await
    }

    async fn revoke_user(&self, username: &str, reason: Reason, now: i64) -> Result<Option<usize>> {
        let username = username.to_owned();
        self.write(move |tx| {
            let Some(user_id) = user_id_of(tx, &username)? else {
                return Ok(None);
            };
            let sids: Vec<String> = tx
                .prepare("SELECT id FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL")?
                .query_map([user_id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for sid in &sids {
                revoke(tx, sid, reason, now)?;
            }
            Ok(Some(sids.len()))
        })
        .await
    }

    async fn touch_session(&self, session_id: &str, now: i64) -> Result<Option<Reason>> {
        let id = session_id.to_owned();
        self.write(move |tx| {
            touch(tx, &id, now)?;
            let reason: Option<Option<String>> = tx
                .query_row(
                    "SELECT revoked_reason FROM sessions WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(match reason {
                Some(reason) => reason_from_db(reason),
                None => Some(Reason::Revoked),
            })
        })
        .await
    }

    async fn live_sessions(&self, user_id: &str, now: i64) -> Result<Vec<SessionListing>> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, device_name, created_at, last_seen_at FROM sessions \
                 WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 \
                 ORDER BY last_seen_at DESC, created_at DESC, id",
            )?;
            let rows = stmt
                .query_map(params![user_id, now], |r| {
                    Ok(SessionListing {
                        id: r.get(0)?,
                        device_name: r.get(1)?,
                        created_at: r.get(2)?,
                        last_seen_at: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_own_session(&self, user_id: &str, session_id: &str, now: i64) -> Result<bool> {
        let (user_id, id) = (user_id.to_owned(), session_id.to_owned());
        self.write(move |tx| {
            let live = tx
                .query_row(
                    "SELECT 1 FROM sessions WHERE id = ?1 AND user_id = ?2 \
                     AND revoked_at IS NULL AND expires_at > ?3",
                    params![id, user_id, now],
                    |_| Ok(()),
                )
                .optional()?;
            match live {
                Some(()) => revoke(tx, &id, Reason::Revoked, now),
                None => Ok(false),
            }
        })
        .await
    }

    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        let (user_id, keep) = (user_id.to_owned(), keep.to_owned());
        self.write(move |tx| revoke_all_but(tx, &user_id, Some(&keep), Reason::Revoked, now))
            .await
    }

    async fn replace_password(
        &self,
        user_id: &str,
        password_hash: &str,
        keep: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>> {
        let (user_id, hash) = (user_id.to_owned(), password_hash.to_owned());
        let keep = keep.map(str::to_owned);
        self.write(move |tx| {
            tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![user_id, hash],
            )?;
            revoke_all_but(tx, &user_id, keep.as_deref(), Reason::Revoked, now)
        })
        .await
    }

    async fn delete_user(&self, username: &str, now: i64) -> Result<Option<DeletedUser>> {
        let username = username.to_owned();
        self.write(move |tx| {
            let Some(user_id) = user_id_of(tx, &username)? else {
                return Ok(None);
            };
            // Revoked first, so that every server learns of it (the
            // revocations stay) before the sessions go.
            revoke_all_but(tx, &user_id, None, Reason::Revoked, now)?;
            tx.execute(
                "DELETE FROM refresh_tokens WHERE session_id IN \
                 (SELECT id FROM sessions WHERE user_id = ?1)",
                [&user_id],
            )?;
            let deleted = DeletedUser {
                sessions: tx.execute("DELETE FROM sessions WHERE user_id = ?1", [&user_id])?,
                notes: tx.execute("DELETE FROM notes WHERE user_id = ?1", [&user_id])?,
                versions: tx.execute("DELETE FROM note_versions WHERE user_id = ?1", [&user_id])?,
                op_results: tx.execute("DELETE FROM ops WHERE user_id = ?1", [&user_id])?,
            };
            tx.execute("DELETE FROM users WHERE id = ?1", [&user_id])?;
            Ok(Some(deleted))
        })
        .await
    }

    async fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, session_id, reason FROM revocations WHERE seq > ?1 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map([seq], |r| {
                    Ok(Revocation::stored(r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
        .await
    }

    async fn last_revocation(&self) -> Result<i64> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT coalesce(max(seq), 0) FROM revocations", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT kid, secret, created_at, retired_at FROM signing_keys ORDER BY seq",
            )?;
            let rows: Vec<(String, Vec<u8>, i64, Option<i64>)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter()
                .map(|(kid, secret, created_at, retired_at)| {
                    KeyRecord::stored(kid, secret, created_at, retired_at)
                })
                .collect()
        })
        .await
    }

    async fn rotate_key(&self, key: KeyRecord, now: i64) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL",
                [now],
            )?;
            tx.execute(
                "INSERT INTO signing_keys (kid, secret, created_at) VALUES (?1, ?2, ?3)",
                params![key.kid, &key.secret[..], key.created_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn keys_version(&self) -> Result<i64> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT coalesce(max(seq), 0) FROM signing_keys", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }

    async fn push(&self, user_id: &str, ops: Vec<Op>, now: i64) -> Result<PushResponse> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            let first_rev: i64 = tx.query_row(
                "SELECT last_rev FROM users WHERE id = ?1",
                [&user_id],
                |r| r.get(0),
            )?;
            let mut last_rev = first_rev;
            let mut results = Vec::with_capacity(ops.len());
            // Applied as each result is made, so that the answer never holds
            // more server notes than it may send.
            let mut budget = ServerNoteBudget::default();
            for op in &ops {
                let op_id = op.op_id().to_string();
                if let Some(mut first) = seen_op(tx, &user_id, &op_id)? {
                    budget.admit(&mut first);
                    results.push(first);
                    continue;
                }
                let mut result = apply_op(tx, &user_id, op, &mut last_rev, now)?;
                record_op(tx, &user_id, &op_id, &result, now)?;
                budget.admit(&mut result);
                results.push(result);
            }
            if last_rev != first_rev {
                // Numbered after every other change, by any process: the
                // write lock serializes them.
                tx.execute(
                    "UPDATE users SET last_rev = ?2, \
                     change_seq = (SELECT coalesce(max(change_seq), 0) + 1 FROM users) \
                     WHERE id = ?1",
                    params![user_id, last_rev],
                )?;
            }
            Ok(PushResponse {
                results,
                cursor: last_rev,
            })
        })
        .await
    }

    async fn pull(&self, user_id: &str, since: i64, limit: u32) -> Result<PullOutcome> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            // One snapshot for the latest rev and the page.
            let tx = c.unchecked_transaction()?;
            let c = &*tx;
            let latest: i64 = c
                .query_row(
                    "SELECT last_rev FROM users WHERE id = ?1",
                    [&user_id],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if since > latest {
                return Ok(PullOutcome::CursorAhead { latest });
            }
            let mut stmt = c.prepare_cached(
                "SELECT note_id, rev, title, body, deleted, updated_at, conflict_of FROM notes \
                 WHERE user_id = ?1 AND rev > ?2 ORDER BY rev LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![user_id, since, i64::from(limit) + 1])?;
            let mut changes = Vec::new();
            let mut bytes = 0usize;
            let mut more = false;
            while let Some(row) = rows.next()? {
                if changes.len() == limit as usize || bytes >= PULL_PAGE_BYTES {
                    more = true;
                    break;
                }
                let change = change_row(row)??;
                bytes += change.title.len() + change.body.len() + 200;
                changes.push(change);
            }
            let cursor = changes.last().map_or(since, |c: &Change| c.rev);
            Ok(PullOutcome::Page(PullResponse {
                changes,
                cursor,
                more,
            }))
        })
        .await
    }

    async fn prune_ops(&self, before: i64, batch: usize) -> Result<usize> {
        self.write(move |tx| {
            Ok(tx.execute(
                "DELETE FROM ops WHERE (user_id, op_id) IN \
                 (SELECT user_id, op_id FROM ops WHERE created_at < ?1 LIMIT ?2)",
                params![before, batch as i64],
            )?)
        })
        .await
    }

    async fn begin_attempt(
        &self,
        key: &AttemptKey,
        limits: AttemptLimits,
        now: i64,
    ) -> Result<AttemptStart> {
        let key = key.clone();
        self.write(move |tx| {
            let since = now - limits.window;
            let counted = |sql: &str, by_user: bool| -> Result<(Vec<i64>, usize)> {
                let mut stmt = tx.prepare_cached(sql)?;
                let rows: Vec<(i64, i64)> = if by_user {
                    stmt.query_map(params![key.user, key.address, since], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?
                } else {
                    stmt.query_map(params![key.address, since], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?
                };
                let in_flight = rows.iter().filter(|r| r.1 == 0).count();
                Ok((
                    rows.into_iter().filter(|r| r.1 != 0).map(|r| r.0).collect(),
                    in_flight,
                ))
            };
            let (user_failed, user_in_flight) = counted(
                "SELECT started_at, state FROM login_attempts \
                 WHERE user_key = ?1 AND address = ?2 AND started_at > ?3 AND state IN (0, 1)",
                true,
            )?;
            let (address_failed, address_in_flight) = counted(
                "SELECT started_at, state FROM login_attempts \
                 WHERE address = ?1 AND started_at > ?2",
                false,
            )?;
            let counts = AttemptCounts {
                user_failed,
                user_in_flight,
                address_failed,
                address_in_flight,
            };
            if let Some(verdict) = counts.verdict(limits, now) {
                return Ok(verdict);
            }
            tx.prepare_cached(
                "INSERT INTO login_attempts (user_key, address, started_at, state) \
                 VALUES (?1, ?2, ?3, 0)",
            )?
            .execute(params![key.user, key.address, now])?;
            Ok(AttemptStart::Started(tx.last_insert_rowid()))
        })
        .await
    }

    async fn end_attempt(&self, id: i64, outcome: AttemptOutcome) -> Result<()> {
        self.write(move |tx| {
            match outcome {
                AttemptOutcome::Failed => {
                    tx.prepare_cached("UPDATE login_attempts SET state = 1 WHERE id = ?1 AND state = 0")?
                        .execute([id])?;
                }
                AttemptOutcome::Succeeded => {
                    tx.prepare_cached(
                        "UPDATE login_attempts SET state = 2 WHERE state = 1 AND \
                         (user_key, address) = (SELECT user_key, address FROM login_attempts WHERE id = ?1)",
                    )?
                    .execute([id])?;
                    tx.prepare_cached("DELETE FROM login_attempts WHERE id = ?1")?
                        .execute([id])?;
                }
                AttemptOutcome::Abandoned => {
                    tx.prepare_cached("DELETE FROM login_attempts WHERE id = ?1")?
                        .execute([id])?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn prune_attempts(&self, before: i64) -> Result<usize> {
        self.write(move |tx| {
            Ok(tx
                .prepare_cached("DELETE FROM login_attempts WHERE started_at < ?1")?
                .execute([before])?)
        })
        .await
    }

    async fn latest_rev(&self, user_id: &str) -> Result<i64> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT last_rev FROM users WHERE id = ?1")?
                    .query_row([user_id], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0),
            )
        })
        .await
    }

    async fn rev_changes_since(&self, seq: i64, limit: usize) -> Result<Vec<RevChange>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT change_seq, id, last_rev FROM users WHERE change_seq > ?1 \
                 ORDER BY change_seq LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![seq, limit as i64], |r| {
                    Ok(RevChange {
                        seq: r.get(0)?,
                        user_id: r.get(1)?,
                        rev: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
        .await
    }

    async fn last_rev_change(&self) -> Result<i64> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT coalesce(max(change_seq), 0) FROM users", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }

    async fn history(&self, user_id: &str, note_id: Uuid) -> Result<Option<Vec<NoteVersion>>> {
        let user_id = user_id.to_owned();
        let note_id = note_id.to_string();
        self.read(move |c| {
            // One snapshot for the note and its versions.
            let tx = c.unchecked_transaction()?;
            if !note_exists(&tx, &user_id, &note_id)? {
                return Ok(None);
            }
            let mut stmt = tx.prepare_cached(
                "SELECT rev, title, body, deleted, updated_at FROM note_versions \
                 WHERE user_id = ?1 AND note_id = ?2 ORDER BY rev DESC LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![user_id, note_id, HISTORY_KEPT_VERSIONS as i64])?;
            let mut versions = Vec::new();
            let mut bytes = 0usize;
            while let Some(r) = rows.next()? {
                let version = NoteVersion {
                    rev: r.get(0)?,
                    title: r.get(1)?,
                    body: r.get(2)?,
                    deleted: r.get(3)?,
                    updated_at: r.get(4)?,
                };
                bytes += version.title.len() + version.body.len() + 100;
                // The newest version always goes (one is at most ~4 MiB).
                if bytes > HISTORY_ANSWER_BYTES && !versions.is_empty() {
                    break;
                }
                versions.push(version);
            }
            Ok(Some(versions))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_protocol::OpStatus;

    fn upsert(note_id: Uuid, base_rev: i64, title: &str) -> Op {
        Op::Upsert {
            op_id: Uuid::now_v7(),
            note_id,
            base_rev,
            title: title.into(),
            body: format!("{title} body"),
            client_time: 1,
            conflict_of: None,
        }
    }

    /// Commits reach the database file once the WAL holds 1,000 pages, as
    /// with SQLite's automatic checkpoint, but no request waits for it.
    #[tokio::test]
    async fn committed_pages_are_copied_into_the_database_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        let body = "x".repeat(1000);
        for _ in 0..16 {
            let ops = (0..500)
                .map(|_| Op::Upsert {
                    op_id: Uuid::now_v7(),
                    note_id: Uuid::now_v7(),
                    base_rev: 0,
                    title: "t".into(),
                    body: body.clone(),
                    client_time: 1,
                    conflict_of: None,
                })
                .collect();
            store.push(&user.id, ops, 2).await.unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while size() < before + 2_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "8 MB of notes still only in the WAL: database file {} bytes",
                size()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A database of the version before note history keeps its notes,
    /// and its notes gain a history from their next edit on.
    #[tokio::test]
    async fn a_version_3_database_gains_history_and_numbered_pushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        let note = Uuid::now_v7();
        store
            .push(&user.id, vec![upsert(note, 0, "first")], 2)
            .await
            .unwrap();
        drop(store);
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "DROP TABLE note_versions; DROP INDEX users_change_seq; \
             ALTER TABLE users DROP COLUMN change_seq; ALTER TABLE sessions DROP COLUMN device_name; \
             ALTER TABLE sessions DROP COLUMN last_seen_at; DROP TABLE login_attempts; PRAGMA user_version = 3;",
        )
        .unwrap();
        drop(c);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.history(&user.id, note).await.unwrap(), Some(vec![]));
        assert_eq!(store.last_rev_change().await.unwrap(), 0);
        let answer = store
            .push(&user.id, vec![upsert(note, 1, "second")], 3)
            .await
            .unwrap();
        assert_eq!(answer.cursor, 2);
        let history = store.history(&user.id, note).await.unwrap().unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].rev, history[0].title.as_str()), (1, "first"));
        let changes = store.rev_changes_since(0, 10).await.unwrap();
        assert_eq!(
            changes,
            [RevChange {
                seq: 1,
                user_id: user.id.clone(),
                rev: 2
            }]
        );
        assert_eq!(store.latest_rev(&user.id).await.unwrap(), 2);
        assert_eq!(store.latest_rev("nobody").await.unwrap(), 0);
    }

    /// A session from before devices knows no device, and was last seen
    /// when it began.
    #[tokio::test]
    async fn a_version_4_session_gains_no_device_and_was_last_seen_when_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        store
            .create_session(&user, "sid", [7; 32], Some("laptop"), 100, 10_000)
            .await
            .unwrap();
        drop(store);
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "ALTER TABLE sessions DROP COLUMN device_name; \
             ALTER TABLE sessions DROP COLUMN last_seen_at; DROP TABLE login_attempts; PRAGMA user_version = 4;",
        )
        .unwrap();
        drop(c);

        let store = SqliteStore::open(&path).unwrap();
        let listed = store.live_sessions(&user.id, 200).await.unwrap();
        assert_eq!(
            listed,
            [SessionListing {
                id: "sid".into(),
                device_name: None,
                created_at: 100,
                last_seen_at: 100,
            }]
        );
    }

    /// A database of the first schema, whose `ops` kept each result as the
    /// JSON of the answer, answers a retried push as it did the first time
    /// once migrated.
    #[tokio::test]
    async fn a_version_1_database_keeps_its_answers_to_retried_pushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let note = Uuid::now_v7();
        let batch = vec![
            upsert(note, 0, "first"),
            upsert(Uuid::now_v7(), 0, "another"),
            // Stale: a conflict, with a copy and the server's note.
            upsert(note, 0, "elsewhere"),
            Op::Delete {
                op_id: Uuid::now_v7(),
                note_id: Uuid::now_v7(),
                base_rev: 0,
            },
        ];
        let store = SqliteStore::open(&path).unwrap();
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        let first = store.push(&user.id, batch.clone(), 2).await.unwrap();
        assert_eq!(first.results[2].status, OpStatus::Conflict);
        assert!(first.results[2].server_note.is_some());
        drop(store);

        // Back to version 1: the same results, as version 1 stored them.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "DROP TABLE ops; CREATE TABLE ops (user_id TEXT NOT NULL, op_id TEXT NOT NULL, \
             result TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (user_id, op_id)) \
             WITHOUT ROWID; ALTER TABLE refresh_tokens DROP COLUMN retired_at; \
             DROP TABLE note_versions; DROP INDEX users_change_seq; \
             ALTER TABLE users DROP COLUMN change_seq; ALTER TABLE sessions DROP COLUMN device_name; \
             ALTER TABLE sessions DROP COLUMN last_seen_at; DROP TABLE login_attempts; PRAGMA user_version = 1;",
        )
        .unwrap();
        for r in &first.results {
            c.execute(
                "INSERT INTO ops VALUES (?1, ?2, ?3, 2)",
                params![
                    user.id,
                    r.op_id.to_string(),
                    serde_json::to_string(r).unwrap()
                ],
            )
            .unwrap();
        }
        drop(c);

        let store = SqliteStore::open(&path).unwrap();
        let again = store.push(&user.id, batch, 3).await.unwrap();
        assert_eq!(again.cursor, first.cursor, "a retried push changed data");
        for (a, b) in first.results.iter().zip(&again.results) {
            assert_eq!(b.status, OpStatus::Duplicate);
            assert_eq!(b.original_status, Some(a.status));
            let first_again = OpResult {
                status: a.status,
                original_status: None,
                ..b.clone()
            };
            assert_eq!(&first_again, a);
        }
    }
}
