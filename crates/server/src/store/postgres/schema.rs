//! The PostgreSQL schema, as versioned migrations run at start. The tables
//! and their meaning are SQLite's after all of its migrations (see
//! `sqlite.rs`), with these differences:
//! * titles, bodies and device names are BYTEA (their UTF-8): a client may
//!   send text holding NUL, which SQLite keeps and PostgreSQL's TEXT refuses;
//! * `seq` columns are identities, and `users.change_seq` takes its numbers
//!   from a sequence, each taken under a lock held until commit (the
//!   store's module documentation says why).
//!
//! `schema_version` holds how many migrations were applied. They run in one
//! transaction holding an advisory lock, so that instances starting
//! together migrate once: the others wait, then find nothing left to do.

use deadpool_postgres::Client;

use crate::store::{Result, StoreError};

/// The migrations, in order.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_rev      BIGINT NOT NULL DEFAULT 0,
    change_seq    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX users_change_seq ON users(change_seq);
CREATE SEQUENCE rev_changes;
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users(id),
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT,
    device_name    BYTEA,
    last_seen_at   BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE TABLE refresh_tokens (
    hash       BYTEA PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    parent     BYTEA,
    created_at BIGINT NOT NULL,
    used_at    BIGINT,
    retired_at BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);
CREATE INDEX refresh_tokens_parent ON refresh_tokens(parent);
CREATE TABLE revocations (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE TABLE signing_keys (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kid        TEXT NOT NULL UNIQUE,
    secret     BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
CREATE TABLE notes (
    user_id     TEXT NOT NULL REFERENCES users(id),
    note_id     TEXT NOT NULL,
    rev         BIGINT NOT NULL,
    title       BYTEA NOT NULL,
    body        BYTEA NOT NULL,
    deleted     BOOLEAN NOT NULL,
    updated_at  BIGINT NOT NULL,
    conflict_of TEXT,
    PRIMARY KEY (user_id, note_id)
);
CREATE UNIQUE INDEX notes_user_rev ON notes(user_id, rev);
CREATE TABLE note_versions (
    user_id    TEXT NOT NULL,
    note_id    TEXT NOT NULL,
    rev        BIGINT NOT NULL,
    title      BYTEA NOT NULL,
    body       BYTEA NOT NULL,
    deleted    BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, note_id, rev)
);
CREATE TABLE ops (
    user_id          TEXT NOT NULL,
    op_id            TEXT NOT NULL,
    note_id          TEXT NOT NULL,
    rev              BIGINT NOT NULL,
    conflict         BOOLEAN NOT NULL,
    conflict_copy_id TEXT,
    copy_rev         BIGINT,
    server_note      TEXT,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (user_id, op_id)
);
CREATE INDEX ops_created ON ops(created_at);
"#,
    // Sign-in throttling, shared by every instance. state: 0 in flight,
    // 1 failed, 2 failed and then forgiven for the user (a success), still
    // counted for the address.
    r#"
CREATE TABLE login_attempts (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_key   BYTEA NOT NULL,
    address    TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    state      SMALLINT NOT NULL
);
CREATE INDEX login_attempts_address ON login_attempts(address, started_at);
CREATE INDEX login_attempts_user ON login_attempts(user_key, address);
CREATE INDEX login_attempts_started ON login_attempts(started_at);
"#,
    // What other instances poll for (a revocation, a user's rev, a new
    // signing key) is announced at commit, so that they poll at once
    // (`listen.rs`). Once per statement: a push of 500 ops notifies once,
    // and PostgreSQL folds a transaction's like notifications into one.
    r#"
CREATE FUNCTION latchkey_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('latchkey_changes', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER revocations_notify AFTER INSERT ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION latchkey_notify();
CREATE TRIGGER signing_keys_notify AFTER INSERT ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION latchkey_notify();
CREATE TRIGGER users_notify AFTER UPDATE OF change_seq ON users
    FOR EACH STATEMENT EXECUTE FUNCTION latchkey_notify();
"#,
    // What a push costs. A note's user was checked row by row, a query
    // each: a fifth of a 500-op push. A push holds its user's row locked
    // (`FOR UPDATE`) and a user is deleted with their notes
    // (`delete_user`), as `ops` and `note_versions` always were. And the
    // keys a push looks up and adds compare as bytes (as SQLite's do), not
    // by the database's locale: the indexes are rebuilt, once.
    r#"
ALTER TABLE notes DROP CONSTRAINT notes_user_id_fkey;
ALTER TABLE notes ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN note_id TYPE TEXT COLLATE "C";
ALTER TABLE note_versions ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN note_id TYPE TEXT COLLATE "C";
ALTER TABLE ops ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN op_id TYPE TEXT COLLATE "C";
"#,
];

/// The advisory lock migrations run under ("latchk" and 1).
const MIGRATION_LOCK: i64 = 0x6c61_7463_686b_0001;

/// Brings the database to the newest schema, in one transaction.
pub(super) async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Looked up rather than `CREATE TABLE IF NOT EXISTS`, whose notice
    // ("already exists, skipping") would reach the log of every start.
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        tx.batch_execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            .await?;
    }
    let version: i64 = match tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await?
    {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    let supported = MIGRATIONS.len() as i64;
    if version < 0 {
        return Err(StoreError::Corrupt(format!("schema version {version}")));
    }
    if version > supported {
        return Err(StoreError::TooNew {
            found: version,
            supported,
        });
    }
    if version == supported {
        return Ok(());
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.batch_execute(sql).await?;
    }
    tx.execute("DELETE FROM schema_version", &[]).await?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&supported],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
