//! Local data of one user in SQLite (WAL, `synchronous=FULL`): notes, the
//! outbox of unsynced ops, the pull cursor, migrations.
//!
//! A save writes the note and its outbox op in one transaction before it
//! returns. The outbox holds at most one *unsent* op per note (later edits
//! replace its content) and at most one *sent* op per note, frozen until its
//! result arrives; an edit made meanwhile queues a new op whose `base_rev`
//! is filled in from that result.

use std::path::Path;

use latchkey_protocol::sync::{
    MAX_BODY_BYTES, MAX_PUSH_BYTES, MAX_TITLE_BYTES, conflict_copy_title,
};
use latchkey_protocol::{Change, Op, OpResult, OpStatus, PullResponse};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

mod search;
mod trash;

pub use search::IndexProgress;
pub use trash::{TRASH_KEEP_SECS, TrashedNote};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE notes (
    note_id     TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    rev         INTEGER NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL,
    conflict_of TEXT
);
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id       TEXT NOT NULL UNIQUE,
    note_id     TEXT NOT NULL,
    base_rev    INTEGER,
    action      TEXT NOT NULL,
    title       TEXT NOT NULL DEFAULT '',
    body        TEXT NOT NULL DEFAULT '',
    client_time INTEGER NOT NULL,
    sent        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_note ON outbox(note_id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"#,
    // The ops in flight (few) without scanning the outbox (all of it).
    r#"
CREATE INDEX outbox_sent ON outbox(note_id) WHERE sent = 1;
"#,
    // The version of a note's text on this device: bumped by saves, deletes
    // and changes from the server, never by a push's acknowledgement (which
    // moves the rev under an unchanged text). The editor saves on the
    // version it loaded, so a save on a text that changed meanwhile keeps
    // both texts instead of overwriting one.
    r#"
ALTER TABLE notes ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
"#,
    trash::MIGRATION,
    search::MIGRATION,
];

/// A note as the UI sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub id: Uuid,
    pub title: String,
    pub body: String,
    /// The server rev this text is based on (0: never synced).
    pub rev: i64,
    pub updated_at: i64,
    /// Set on a conflict copy: the note it split from.
    pub conflict_of: Option<Uuid>,
    /// Has a change not yet acknowledged by the server.
    pub pending: bool,
    /// The version of this text on this device: pass it back to
    /// [`LocalStore::save_note`] to save on it.
    pub version: i64,
}

pub struct LocalStore {
    conn: Connection,
}

fn uuid(s: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn note_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Note> {
    Ok(Note {
        id: uuid(&r.get::<_, String>(0)?)?,
        title: r.get(1)?,
        body: r.get(2)?,
        rev: r.get(3)?,
        updated_at: r.get(4)?,
        conflict_of: r
            .get::<_, Option<String>>(5)?
            .as_deref()
            .map(uuid)
            .transpose()?,
        pending: r.get(6)?,
        version: r.get(7)?,
    })
}

const NOTE_SELECT: &str = "SELECT n.note_id, n.title, n.body, n.rev, n.updated_at, n.conflict_of, \
     EXISTS (SELECT 1 FROM outbox o WHERE o.note_id = n.note_id), n.version FROM notes n";

impl LocalStore {
    /// Opens (creating, private) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Room for every statement of this file: the per-row ones of a
        // sync are prepared once, not once per row.
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 16 MiB of page cache (SQLite's default is 2): a sync of 10,000
        // notes walks ~10 MB of notes and outbox, re-read from the OS
        // otherwise. Used only as the database grows.
        conn.pragma_update(None, "cache_size", -16_384)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            return Err(Error::Storage(
                "the local database is from a newer Latchkey".into(),
            ));
        }
        // An up-to-date database is not written to: opening it costs no
        // commit (and no fsync).
        if version < MIGRATIONS.len() as i64 {
            for sql in &MIGRATIONS[version as usize..] {
                tx.execute_batch(sql)?;
            }
            tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
        }
        tx.commit()?;
        Ok(Self { conn })
    }

    /// Live notes, most recently edited first.
    pub fn list_notes(&self) -> Result<Vec<Note>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{NOTE_SELECT} WHERE n.deleted = 0 ORDER BY n.updated_at DESC, n.note_id"
        ))?;
        let notes = stmt
            .query_map([], note_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(notes)
    }

    pub fn get_note(&self, id: Uuid) -> Result<Note> {
        self.conn
            .prepare_cached(&format!(
                "{NOTE_SELECT} WHERE n.note_id = ?1 AND n.deleted = 0"
            ))?
            .query_row([id.to_string()], note_row)
            .optional()?
            .ok_or(Error::NoteNotFound)
    }

    /// Notes with an unsent or unacknowledged op.
    ///
    /// Runs after every save, so it must not scan the outbox: a note has at
    /// most one unsent and one sent op, so the notes are the ops less the
    /// sent ops whose note also has an unsent one (the same number as
    /// `count(DISTINCT note_id)`, which walks every op).
    pub fn pending_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT (SELECT count(*) FROM outbox) - (SELECT count(*) FROM outbox AS s INDEXED BY outbox_sent \
                 WHERE s.sent = 1 AND EXISTS (SELECT 1 FROM outbox AS u WHERE u.note_id = s.note_id AND u.sent = 0))",
            )?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Saves a note's text and queues it, durably, in one transaction.
    ///
    /// `base_version` is the [`Note::version`] the editor started from
    /// (`None`: save whatever the note holds now). If the note's text
    /// changed since (a pull brought another device's edit), both texts are
    /// kept: the note keeps the other text and this one goes into a new
    /// conflict copy, which is returned (its id is not `id`).
    pub fn save_note(
        &mut self,
        id: Uuid,
        base_version: Option<i64>,
        title: &str,
        body: &str,
        now: i64,
    ) -> Result<Note> {
        if title.len() > MAX_TITLE_BYTES {
            return Err(Error::InvalidInput(format!(
                "a title may be at most {MAX_TITLE_BYTES} bytes"
            )));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(Error::InvalidInput(format!(
                "a note may be at most {} MiB",
                MAX_BODY_BYTES >> 20
            )));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let key = id.to_string();
        let current: Option<(i64, i64, bool)> = tx
            .prepare_cached("SELECT rev, version, deleted FROM notes WHERE note_id = ?1")?
            .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        // A stale save over a live text that differs: keep both. (Over a
        // tombstone the edit wins, as a delete always loses to an edit.)
        // The text is read only then: most saves are on the current version.
        let stale = match (current, base_version) {
            (Some((_, version, false)), Some(base)) if version != base => {
                let same: bool = tx
                    .prepare_cached(
                        "SELECT title = ?2 AND body = ?3 FROM notes WHERE note_id = ?1",
                    )?
                    .query_row(params![key, title, body], |r| r.get(0))?;
                !same
            }
            _ => false,
        };
        let saved = if stale {
            let copy = Uuid::now_v7();
            let copy_title = conflict_copy_title(title);
            tx.prepare_cached(
                "INSERT INTO notes (note_id, title, body, rev, deleted, updated_at, conflict_of, version) \
                 VALUES (?1, ?2, ?3, 0, 0, ?4, ?5, 1)",
            )?
            .execute(params![copy.to_string(), copy_title, body, now, key])?;
            queue(&tx, &copy.to_string(), "upsert", &copy_title, body, 0, now)?;
            copy
        } else {
            tx.prepare_cached(
                "INSERT INTO notes (note_id, title, body, rev, deleted, updated_at, version) VALUES (?1, ?2, ?3, 0, 0, ?4, 1) \
                 ON CONFLICT (note_id) DO UPDATE SET title = excluded.title, body = excluded.body, deleted = 0, \
                 updated_at = excluded.updated_at, version = notes.version + 1",
            )?
            .execute(params![key, title, body, now])?;
            let rev = current.map_or(0, |c| c.0);
            queue(&tx, &key, "upsert", title, body, rev, now)?;
            id
        };
        tx.commit()?;
        self.get_note(saved)
    }

    /// Deletes a note locally and queues the delete. A note the server never
    /// saw simply goes.
    pub fn delete_note(&mut self, id: Uuid, now: i64) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let key = id.to_string();
        let rev: Option<i64> = tx
            .query_row(
                "SELECT rev FROM notes WHERE note_id = ?1 AND deleted = 0",
                [&key],
                |r| r.get(0),
            )
            .optional()?;
        let Some(rev) = rev else {
            return Err(Error::NoteNotFound);
        };
        let in_flight: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE note_id = ?1 AND sent = 1)",
            [&key],
            |r| r.get(0),
        )?;
        if rev == 0 && !in_flight {
            // Deleting the row skips the trash trigger (it knows no time).
            trash::keep(&tx, &key, now)?;
            tx.execute("DELETE FROM outbox WHERE note_id = ?1", [&key])?;
            tx.execute("DELETE FROM notes WHERE note_id = ?1", [&key])?;
        } else {
            tx.execute("UPDATE notes SET deleted = 1, title = '', body = '', updated_at = ?2, version = version + 1 WHERE note_id = ?1", params![key, now])?;
            queue(&tx, &key, "delete", "", "", rev, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The next batch to push: ops already sent (their result never came)
    /// first, then unsent ops whose base is known, oldest first, one per
    /// note; the unsent ones are marked sent in the same transaction.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<Op>> {
        self.batch(max, true)
    }

    /// The next batch of unsent ops only, marked sent: for a push sent
    /// while the previous batch is still in flight.
    pub fn next_unsent_batch(&mut self, max: usize) -> Result<Vec<Op>> {
        self.batch(max, false)
    }

    fn batch(&mut self, max: usize, resend: bool) -> Result<Vec<Op>> {
        self.bookkeeping(|tx| Self::take_batch(tx, max, resend))
    }

    fn take_batch(tx: &Transaction<'_>, max: usize, resend: bool) -> Result<Vec<Op>> {
        let mut ops = Vec::new();
        // The same order as `ORDER BY sent DESC, seq`, as two scans in seq
        // order that stop at `max` rows instead of one sort of the whole
        // outbox (bodies included) per batch.
        // A new note made as a conflict copy here says what it copies.
        const SENT: &str = "SELECT seq, op_id, note_id, base_rev, action, title, body, client_time, sent, \
             CASE base_rev WHEN 0 THEN (SELECT conflict_of FROM notes n WHERE n.note_id = outbox.note_id) END \
             FROM outbox INDEXED BY outbox_sent WHERE sent = 1 ORDER BY seq LIMIT ?1";
        const UNSENT: &str = "SELECT seq, op_id, note_id, base_rev, action, title, body, client_time, sent, \
             CASE base_rev WHEN 0 THEN (SELECT conflict_of FROM notes n WHERE n.note_id = outbox.note_id) END \
             FROM outbox WHERE sent = 0 AND base_rev IS NOT NULL \
             AND note_id NOT IN (SELECT note_id FROM outbox WHERE sent = 1) ORDER BY seq LIMIT ?1";
        let scans: &[&str] = if resend { &[SENT, UNSENT] } else { &[UNSENT] };
        let mut bytes = PUSH_ENVELOPE_BYTES;
        let mut full = false;
        for sql in scans {
            let left = max.saturating_sub(ops.len());
            if left == 0 || full {
                break;
            }
            let mut stmt = tx.prepare_cached(sql)?;
            let mut rows = stmt.query([left as i64])?;
            while let Some(r) = rows.next()? {
                let (seq, sent): (i64, bool) = (r.get(0)?, r.get(8)?);
                let op_id = uuid(&r.get::<_, String>(1)?)?;
                let note_id = uuid(&r.get::<_, String>(2)?)?;
                let base_rev: i64 = r.get::<_, Option<i64>>(3)?.unwrap_or(0);
                let op = match r.get::<_, String>(4)?.as_str() {
                    "delete" => Op::Delete {
                        op_id,
                        note_id,
                        base_rev,
                    },
                    _ => Op::Upsert {
                        op_id,
                        note_id,
                        base_rev,
                        title: r.get(5)?,
                        body: r.get(6)?,
                        client_time: r.get(7)?,
                        conflict_of: r
                            .get::<_, Option<String>>(9)?
                            .as_deref()
                            .map(uuid)
                            .transpose()?,
                    },
                };
                let size = op_json_bytes(&op);
                // Sized by bytes too: a push stays under the server's limit
                // (one op alone always fits: PROTOCOL.md's field limits).
                if !ops.is_empty() && bytes + size > PUSH_BATCH_BYTES {
                    full = true;
                    break;
                }
                bytes += size;
                ops.push((seq, sent, op));
            }
        }
        {
            let mut mark = tx.prepare_cached("UPDATE outbox SET sent = 1 WHERE seq = ?1")?;
            for (seq, sent, _) in &ops {
                if !sent {
                    mark.execute([seq])?;
                }
            }
        }
        Ok(ops.into_iter().map(|(_, _, op)| op).collect())
    }

    /// Applies a push answer: acknowledged ops leave the outbox, queued
    /// follow-ups learn their base, conflicts take the server's version.
    /// Returns how many notes' texts changed.
    pub fn apply_push(&mut self, results: &[OpResult]) -> Result<usize> {
        self.bookkeeping(|tx| Self::settle(tx, results))
    }

    fn settle(tx: &Transaction<'_>, results: &[OpResult]) -> Result<usize> {
        let mut changed = 0;
        for r in results {
            let op: Option<(String, Option<i64>)> = tx
                .prepare_cached(
                    "DELETE FROM outbox WHERE op_id = ?1 AND sent = 1 RETURNING note_id, base_rev",
                )?
                .query_row([r.op_id.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((note_key, sent_base)) = op else {
                continue;
            };
            let status = match r.status {
                OpStatus::Duplicate => r.original_status.unwrap_or(OpStatus::Applied),
                s => s,
            };
            // An edit made while the op was in flight was queued with no
            // base (the only op of the note left in the outbox now).
            let set_follow_up_base = |base: i64| -> Result<()> {
                tx.prepare_cached(
                    "UPDATE outbox SET base_rev = ?2 WHERE note_id = ?1 AND base_rev IS NULL",
                )?
                .execute(params![note_key, base])?;
                Ok(())
            };
            if status == OpStatus::Conflict {
                // The follow-up edits the text that just conflicted: it
                // keeps the stale base, so it conflicts too and lands in a
                // conflict copy; nothing is lost. With no follow-up the
                // note takes the server's version at once.
                set_follow_up_base(sent_base.unwrap_or(0))?;
                let follow_up: bool = tx
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE note_id = ?1)")?
                    .query_row([&note_key], |row| row.get(0))?;
                match (follow_up, &r.server_note) {
                    (false, Some(server)) => {
                        write_change(tx, server)?;
                        changed += 1;
                    }
                    // The answer left the server's version out (a bounded
                    // answer, PROTOCOL.md v1.1): pull it again. The pull
                    // that moved the cursor past it skipped this note.
                    (_, None) => rewind_cursor(tx, r.rev - 1)?,
                    (true, Some(_)) => {}
                }
            } else {
                set_follow_up_base(r.rev)?;
                tx.prepare_cached("UPDATE notes SET rev = ?2 WHERE note_id = ?1")?
                    .execute(params![note_key, r.rev])?;
            }
        }
        Ok(changed)
    }

    /// Applies a pull page and moves the cursor, in one transaction. Notes
    /// with pending local ops are left alone: the push settles them.
    /// Returns how many notes changed.
    pub fn apply_pull(&mut self, page: &PullResponse) -> Result<usize> {
        self.bookkeeping(|tx| Self::merge_pull(tx, page))
    }

    fn merge_pull(tx: &Transaction<'_>, page: &PullResponse) -> Result<usize> {
        let mut changed = 0;
        for change in &page.changes {
            // Skipped: a note with pending ops (the push settles it) and a
            // note already at this rev (this device's own pushed change).
            let n = tx.prepare_cached(
                "INSERT INTO notes (note_id, title, body, rev, deleted, updated_at, conflict_of) \
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE note_id = ?1) \
                 ON CONFLICT (note_id) DO UPDATE SET title = excluded.title, body = excluded.body, rev = excluded.rev, \
                 deleted = excluded.deleted, updated_at = excluded.updated_at, conflict_of = excluded.conflict_of, \
                 version = notes.version + 1 \
                 WHERE notes.rev <> excluded.rev",
            )?
            .execute(change_params(change))?;
            changed += n;
        }
        tx.execute("INSERT INTO meta (key, value) VALUES ('cursor', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [page.cursor])?;
        Ok(changed)
    }

    /// Takes back an op marked sent that the server refused (too large for
    /// it): unsent again, so that a later edit of the note replaces it (a
    /// sent op is frozen, and edits queue behind it). An edit already queued
    /// behind it replaces it now.
    pub fn unsend(&mut self, op_id: Uuid) -> Result<()> {
        self.bookkeeping(|tx| {
            let key = op_id.to_string();
            let op: Option<(String, Option<i64>)> = tx
                .query_row(
                    "SELECT note_id, base_rev FROM outbox WHERE op_id = ?1 AND sent = 1",
                    [&key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((note, base)) = op else {
                return Ok(());
            };
            let superseded = tx.execute(
                "UPDATE outbox SET base_rev = ?2 WHERE note_id = ?1 AND sent = 0",
                params![note, base],
            )?;
            if superseded > 0 {
                tx.execute("DELETE FROM outbox WHERE op_id = ?1", [&key])?;
            } else {
                tx.execute("UPDATE outbox SET sent = 0 WHERE op_id = ?1", [&key])?;
            }
            Ok(())
        })
    }

    /// Starts a resync from 0 with a server that lost changes (restored
    /// from an older backup): the pages that follow go to
    /// [`LocalStore::apply_resync_page`], then [`LocalStore::finish_resync`].
    /// The cursor stays where it is until the end, so a resync cut short
    /// starts again from 0.
    pub fn begin_resync(&mut self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS resync_seen (note_id TEXT PRIMARY KEY) WITHOUT ROWID; \
             DELETE FROM resync_seen;",
        )?;
        Ok(())
    }

    /// Compares a page of the server's notes with this device's. Where the
    /// server holds an older text than this device, this device's text is
    /// queued again on the server's rev; where the server's text differs and
    /// is not older, the note takes it and this device's text is kept in a
    /// conflict copy. Notes with queued changes are left to the push.
    pub fn apply_resync_page(&mut self, page: &PullResponse, now: i64) -> Result<()> {
        self.bookkeeping(|tx| {
            for change in &page.changes {
                resync_change(tx, change, now)?;
            }
            Ok(())
        })
    }

    /// Ends a resync: notes the server lacks are queued again as new, and
    /// the cursor moves to `cursor`.
    pub fn finish_resync(&mut self, cursor: i64, now: i64) -> Result<()> {
        self.bookkeeping(|tx| {
            let missing: Vec<(String, String, String, bool)> = tx
                .prepare(
                    "SELECT note_id, title, body, deleted FROM notes n WHERE rev > 0 \
                     AND NOT EXISTS (SELECT 1 FROM temp.resync_seen s WHERE s.note_id = n.note_id) \
                     AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.note_id = n.note_id)",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (key, title, body, deleted) in missing {
                if deleted {
                    // A tombstone of a note the server never had: nothing to tell it.
                    tx.execute("DELETE FROM notes WHERE note_id = ?1", [&key])?;
                } else {
                    tx.execute("UPDATE notes SET rev = 0 WHERE note_id = ?1", [&key])?;
                    queue(tx, &key, "upsert", &title, &body, 0, now)?;
                }
            }
            tx.execute("DELETE FROM temp.resync_seen", [])?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('cursor', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [cursor],
            )?;
            Ok(())
        })
    }

    /// Runs a transaction of sync bookkeeping (marking ops sent, applying
    /// push and pull answers) without waiting for the disk: a power cut may
    /// undo it, and only it and what followed it (the WAL keeps commits in
    /// order, and a save's own sync makes all before it durable too). Undone
    /// bookkeeping costs a resend the server answers as a duplicate, or a
    /// pull again: nothing typed is lost. Saves and deletes stay durable.
    fn bookkeeping<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let out = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::from)
            .and_then(|tx| {
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            });
        let durable_again = self.conn.pragma_update(None, "synchronous", "FULL");
        let out = out?;
        durable_again?;
        Ok(out)
    }

    /// Where the next pull starts.
    pub fn cursor(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0))
    }

    /// Records a sync attempt for the status bar: its time and outcome
    /// (`ok` or the error), and, when it worked, the time of the last
    /// successful sync.
    pub fn set_last_sync(&self, at: i64, outcome: &str) -> Result<()> {
        let upsert = "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        self.conn.prepare_cached(upsert)?.execute(params![
            "last_sync",
            serde_json::json!({"at": at, "outcome": outcome}).to_string()
        ])?;
        if outcome == SYNC_OK {
            self.conn
                .prepare_cached(upsert)?
                .execute(params!["last_ok_sync", at])?;
        }
        Ok(())
    }

    /// The last successful sync and the last attempt (time and outcome).
    pub fn last_sync(&self) -> Result<SyncRecord> {
        let mut record = SyncRecord::default();
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, value FROM meta WHERE key IN ('last_sync', 'last_ok_sync')",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            match r.get::<_, String>(0)?.as_str() {
                "last_ok_sync" => record.ok_at = r.get(1)?,
                _ => {
                    let raw: String = r.get(1)?;
                    record.attempt = serde_json::from_str::<serde_json::Value>(&raw)
                        .ok()
                        .and_then(|v| {
                            Some((
                                v.get("at")?.as_i64()?,
                                v.get("outcome")?.as_str()?.to_owned(),
                            ))
                        });
                }
            }
        }
        // A database from before the last success was kept apart.
        if record.ok_at.is_none()
            && let Some((at, outcome)) = &record.attempt
            && outcome == SYNC_OK
        {
            record.ok_at = Some(*at);
        }
        Ok(record)
    }
}

/// The outcome of a sync that worked.
pub const SYNC_OK: &str = "ok";

/// What the status bar shows of syncing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncRecord {
    /// The last sync that worked.
    pub ok_at: Option<i64>,
    /// The last attempt: its time and `ok` or the error that stopped it.
    pub attempt: Option<(i64, String)>,
}

/// A push batch is cut before its JSON would pass this many bytes: the
/// server's limit less room for the envelope and rounding.
pub const PUSH_BATCH_BYTES: usize = MAX_PUSH_BYTES - 64 * 1024;
/// `{"ops":[]}` and some slack.
const PUSH_ENVELOPE_BYTES: usize = 64;

/// The bytes `op` takes in a push's JSON, from above: ids, numbers and keys
/// as a fixed part, strings with their escapes.
fn op_json_bytes(op: &Op) -> usize {
    // Keys, two or three UUIDs, numbers: about 250 bytes.
    const FIXED: usize = 320;
    match op {
        Op::Upsert { title, body, .. } => FIXED + json_str_bytes(title) + json_str_bytes(body),
        Op::Delete { .. } => FIXED,
    }
}

/// The length of `s` as a JSON string (quotes and escapes included).
fn json_str_bytes(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Queues `action` for a note: replaces its unsent op if there is one,
/// otherwise adds one (with no base yet while another op is in flight).
fn queue(
    tx: &rusqlite::Transaction<'_>,
    note_key: &str,
    action: &str,
    title: &str,
    body: &str,
    rev: i64,
    now: i64,
) -> Result<()> {
    // A replaced op gets a new op id: it may have been sent already (a power
    // cut can undo the bookkeeping that marked it sent after the server
    // applied it), and the server would answer new content under a spent id
    // as a duplicate and drop it. Under a new id it applies or conflicts:
    // either way the text reaches the server.
    let replaced = tx
        .prepare_cached(
            "UPDATE outbox SET op_id = ?6, action = ?2, title = ?3, body = ?4, client_time = ?5 WHERE note_id = ?1 AND sent = 0",
        )?
        .execute(params![note_key, action, title, body, now, Uuid::now_v7().to_string()])?;
    if replaced == 0 {
        let in_flight: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE note_id = ?1 AND sent = 1)")?
            .query_row([note_key], |r| r.get(0))?;
        tx.prepare_cached(
            "INSERT INTO outbox (op_id, note_id, base_rev, action, title, body, client_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![Uuid::now_v7().to_string(), note_key, (!in_flight).then_some(rev), action, title, body, now])?;
    }
    Ok(())
}

/// One note of a resync page (see [`LocalStore::apply_resync_page`]).
fn resync_change(tx: &Transaction<'_>, c: &Change, now: i64) -> Result<()> {
    let key = c.note_id.to_string();
    tx.prepare_cached("INSERT OR IGNORE INTO temp.resync_seen (note_id) VALUES (?1)")?
        .execute([&key])?;
    let pending: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE note_id = ?1)")?
        .query_row([&key], |r| r.get(0))?;
    if pending {
        return Ok(());
    }
    let local: Option<(i64, bool, String, String)> = tx
        .prepare_cached("SELECT rev, deleted, title, body FROM notes WHERE note_id = ?1")?
        .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((rev, deleted, title, body)) = local else {
        return write_change(tx, c);
    };
    if (deleted, title.as_str(), body.as_str()) == (c.deleted, c.title.as_str(), c.body.as_str()) {
        tx.prepare_cached("UPDATE notes SET rev = ?2 WHERE note_id = ?1")?
            .execute(params![key, c.rev])?;
        return Ok(());
    }
    if rev > c.rev {
        // The server lost this device's later text: send it again on the
        // server's rev.
        tx.prepare_cached("UPDATE notes SET rev = ?2 WHERE note_id = ?1")?
            .execute(params![key, c.rev])?;
        let action = if deleted { "delete" } else { "upsert" };
        return queue(tx, &key, action, &title, &body, c.rev, now);
    }
    // Revs are reused after a restore, so a text that differs at a rev
    // that is not older may be another device's newer edit: keep both.
    if !deleted {
        let copy = Uuid::now_v7().to_string();
        let copy_title = conflict_copy_title(&title);
        tx.prepare_cached(
            "INSERT INTO notes (note_id, title, body, rev, deleted, updated_at, conflict_of) \
             VALUES (?1, ?2, ?3, 0, 0, ?4, ?5)",
        )?
        .execute(params![copy, copy_title, body, now, key])?;
        queue(tx, &copy, "upsert", &copy_title, &body, 0, now)?;
    }
    write_change(tx, c)
}

/// Moves the pull cursor back to `to` if it is past it: the next pull
/// brings every change after `to` again (a page applies over a note only
/// when its rev differs).
fn rewind_cursor(tx: &Transaction<'_>, to: i64) -> Result<()> {
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'cursor' AND value > ?1")?
        .execute([to.max(0)])?;
    Ok(())
}

fn write_change(tx: &Transaction<'_>, c: &Change) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO notes (note_id, title, body, rev, deleted, updated_at, conflict_of) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (note_id) DO UPDATE SET title = excluded.title, body = excluded.body, rev = excluded.rev, \
         deleted = excluded.deleted, updated_at = excluded.updated_at, conflict_of = excluded.conflict_of, \
         version = notes.version + 1",
    )?
    .execute(change_params(c))?;
    Ok(())
}

/// A change as the parameters of the notes statements (?1 to ?7).
fn change_params(c: &Change) -> impl rusqlite::Params + '_ {
    (
        c.note_id.to_string(),
        c.title.as_str(),
        c.body.as_str(),
        c.rev,
        c.deleted,
        c.updated_at,
        c.conflict_of.map(|u| u.to_string()),
    )
}

/// Creates a directory (and parents) readable by this user only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    Ok(())
}

/// What the store's tests (here, `trash`, `search`) start from.
#[cfg(test)]
mod testing {
    use super::*;

    /// A new store in a folder of its own (kept as long as the folder).
    pub(super) fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&dir.path().join("u/notes.db")).unwrap();
        (dir, s)
    }

    /// The server's answer that applied `op` at `rev`.
    pub(super) fn applied(op: &Op, rev: i64) -> OpResult {
        OpResult {
            op_id: op.op_id(),
            status: OpStatus::Applied,
            note_id: op.note_id(),
            rev,
            original_status: None,
            conflict_copy_id: None,
            copy_rev: None,
            server_note: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{applied, store};
    use super::*;

    /// Sync bookkeeping commits without waiting for the disk; the saves
    /// after it must still wait (`synchronous = FULL`, 2).
    #[test]
    fn saves_stay_durable_after_sync_bookkeeping() {
        let (_d, mut s) = store();
        let durability = |s: &LocalStore| {
            s.conn
                .pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))
                .unwrap()
        };
        assert_eq!(durability(&s), 2);
        s.save_note(Uuid::now_v7(), None, "t", "b", 1).unwrap();
        let batch = s.next_batch(500).unwrap();
        assert_eq!(durability(&s), 2);
        s.apply_push(&[applied(&batch[0], 1)]).unwrap();
        assert_eq!(durability(&s), 2);
        let page = PullResponse {
            changes: vec![],
            cursor: 1,
            more: false,
        };
        s.apply_pull(&page).unwrap();
        assert_eq!(durability(&s), 2);
    }

    #[test]
    fn many_edits_are_one_op() {
        let (_d, mut s) = store();
        let id = Uuid::new_v4();
        for i in 0..50 {
            s.save_note(id, None, "t", &format!("body {i}"), 100 + i)
                .unwrap();
        }
        assert_eq!(s.pending_count().unwrap(), 1);
        let batch = s.next_batch(500).unwrap();
        assert_eq!(batch.len(), 1);
        let Op::Upsert { body, base_rev, .. } = &batch[0] else {
            panic!()
        };
        assert_eq!((body.as_str(), *base_rev), ("body 49", 0));
    }

    #[test]
    fn edit_during_flight_waits_for_the_result() {
        let (_d, mut s) = store();
        let id = Uuid::new_v4();
        s.save_note(id, None, "t", "v1", 1).unwrap();
        let first = s.next_batch(500).unwrap();
        s.save_note(id, None, "t", "v2", 2).unwrap();
        // the sent op is resent until answered; the follow-up waits
        let again = s.next_batch(500).unwrap();
        assert_eq!(again, first);
        s.apply_push(&[applied(&first[0], 7)]).unwrap();
        let next = s.next_batch(500).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].base_rev(), 7);
        assert_ne!(next[0].op_id(), first[0].op_id());
        assert_eq!(s.pending_count().unwrap(), 1);
        s.apply_push(&[applied(&next[0], 8)]).unwrap();
        assert_eq!(s.pending_count().unwrap(), 0);
        assert_eq!(s.get_note(id).unwrap().rev, 8);
    }

    #[test]
    fn batches_resend_sent_ops_first_then_the_oldest_unsent() {
        let (_d, mut s) = store();
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids[..5].iter().enumerate() {
            s.save_note(*id, None, "t", "b", i as i64).unwrap();
        }
        let notes = |ops: &[Op]| ops.iter().map(Op::note_id).collect::<Vec<_>>();
        let first = s.next_batch(2).unwrap();
        assert_eq!(notes(&first), ids[..2]);
        s.save_note(ids[5], None, "t", "b", 9).unwrap();
        // the two unanswered ones again, then the oldest unsent
        let second = s.next_batch(3).unwrap();
        assert_eq!(notes(&second), ids[..3]);
        assert_eq!(second[..2], first[..]);
        assert_eq!(notes(&s.next_batch(1).unwrap()), ids[..1]);
        assert_eq!(notes(&s.next_batch(100).unwrap()), ids);
    }

    #[test]
    fn a_pipelined_batch_leaves_the_batch_in_flight_alone() {
        let (_d, mut s) = store();
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            s.save_note(*id, None, "t", "b", i as i64).unwrap();
        }
        let notes = |ops: &[Op]| ops.iter().map(Op::note_id).collect::<Vec<_>>();
        let first = s.next_batch(2).unwrap();
        // an edit of a note in flight waits for that note's answer
        s.save_note(ids[0], None, "t", "again", 5).unwrap();
        assert_eq!(notes(&s.next_unsent_batch(10).unwrap()), ids[2..]);
        assert!(s.next_unsent_batch(10).unwrap().is_empty());
        s.apply_push(&[applied(&first[0], 1)]).unwrap();
        let follow_up = s.next_unsent_batch(10).unwrap();
        assert_eq!(notes(&follow_up), ids[..1]);
        assert_eq!(follow_up[0].base_rev(), 1);
    }

    #[test]
    fn pending_counts_notes_not_ops() {
        let (_d, mut s) = store();
        let distinct = |s: &LocalStore| -> u64 {
            s.conn
                .query_row("SELECT count(DISTINCT note_id) FROM outbox", [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap() as u64
        };
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        s.save_note(a, None, "t", "1", 1).unwrap();
        s.save_note(b, None, "t", "1", 1).unwrap();
        let sent = s.next_batch(1).unwrap();
        // a: sent + unsent; b: unsent; c: unsent
        s.save_note(a, None, "t", "2", 2).unwrap();
        s.save_note(c, None, "t", "1", 2).unwrap();
        assert_eq!((s.pending_count().unwrap(), distinct(&s)), (3, 3));
        s.apply_push(&[applied(&sent[0], 1)]).unwrap();
        assert_eq!((s.pending_count().unwrap(), distinct(&s)), (3, 3));
        let all = s.next_batch(10).unwrap();
        assert_eq!((s.pending_count().unwrap(), distinct(&s)), (3, 3));
        let results: Vec<_> = all.iter().map(|op| applied(op, 5)).collect();
        s.apply_push(&results).unwrap();
        assert_eq!((s.pending_count().unwrap(), distinct(&s)), (0, 0));
    }

    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let mut s = LocalStore::open(&path).unwrap();
        let version: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let id = Uuid::new_v4();
        s.save_note(id, None, "t", "b", 1).unwrap();
        assert_eq!(s.next_batch(10).unwrap().len(), 1);
        drop(s);
        // and opens again as it is
        let mut s = LocalStore::open(&path).unwrap();
        assert_eq!(s.next_batch(10).unwrap()[0].note_id(), id);
    }

    #[test]
    fn deleting_an_unsynced_note_leaves_nothing_to_sync() {
        let (_d, mut s) = store();
        let id = Uuid::new_v4();
        s.save_note(id, None, "t", "b", 1).unwrap();
        s.delete_note(id, 2).unwrap();
        assert_eq!(s.pending_count().unwrap(), 0);
        assert!(s.list_notes().unwrap().is_empty());
        assert_eq!(s.delete_note(id, 3).unwrap_err(), Error::NoteNotFound);
    }

    #[test]
    fn pull_skips_notes_with_pending_ops_and_moves_the_cursor() {
        let (_d, mut s) = store();
        let mine = Uuid::new_v4();
        s.save_note(mine, None, "mine", "local", 1).unwrap();
        let theirs = Uuid::new_v4();
        let change = |id, title: &str, rev| Change {
            note_id: id,
            rev,
            title: title.into(),
            body: "server".into(),
            deleted: false,
            updated_at: 5,
            conflict_of: None,
        };
        s.apply_pull(&PullResponse {
            changes: vec![change(mine, "srv", 3), change(theirs, "theirs", 4)],
            cursor: 4,
            more: false,
        })
        .unwrap();
        assert_eq!(s.get_note(mine).unwrap().body, "local");
        assert_eq!(s.get_note(theirs).unwrap().title, "theirs");
        assert_eq!(s.cursor().unwrap(), 4);
    }

    #[test]
    fn a_save_on_a_stale_version_keeps_both_texts() {
        let (_d, mut s) = store();
        let id = Uuid::now_v7();
        let opened = s.save_note(id, None, "t", "mine", 1).unwrap();
        // A pull brings another device's text.
        let batch = s.next_batch(10).unwrap();
        s.apply_push(&[applied(&batch[0], 1)]).unwrap();
        let pulled = Change {
            note_id: id,
            rev: 2,
            title: "t".into(),
            body: "theirs".into(),
            deleted: false,
            updated_at: 2,
            conflict_of: None,
        };
        s.apply_pull(&PullResponse {
            changes: vec![pulled],
            cursor: 2,
            more: false,
        })
        .unwrap();
        let copy = s
            .save_note(id, Some(opened.version), "t", "mine, edited", 3)
            .unwrap();
        assert_ne!(copy.id, id);
        assert_eq!(
            (copy.title.as_str(), copy.conflict_of),
            ("t (conflict copy)", Some(id))
        );
        assert_eq!(s.get_note(id).unwrap().body, "theirs");
        // The same text again is no conflict; nor is a save on the current version.
        let current = s.get_note(id).unwrap().version;
        assert_eq!(
            s.save_note(id, Some(opened.version), "t", "theirs", 4)
                .unwrap()
                .id,
            id
        );
        assert_eq!(
            s.save_note(id, Some(current + 1), "t", "on top", 5)
                .unwrap()
                .id,
            id
        );
        let queued: Vec<_> = s.next_batch(10).unwrap().iter().map(Op::note_id).collect();
        assert_eq!(queued, [copy.id, id]);
    }

    #[test]
    fn an_acknowledgement_does_not_move_the_version() {
        let (_d, mut s) = store();
        let id = Uuid::now_v7();
        let saved = s.save_note(id, None, "t", "b", 1).unwrap();
        let batch = s.next_batch(10).unwrap();
        s.apply_push(&[applied(&batch[0], 9)]).unwrap();
        let note = s.get_note(id).unwrap();
        assert_eq!((note.rev, note.version), (9, saved.version));
    }

    /// An edit replacing an unsent op's text gives it a new op id: the op
    /// may have been sent before a power cut undid its sent mark.
    #[test]
    fn replacing_an_ops_text_gives_it_a_new_id() {
        let (_d, mut s) = store();
        let id = Uuid::now_v7();
        s.save_note(id, None, "t", "one", 1).unwrap();
        let first = s
            .conn
            .query_row("SELECT op_id FROM outbox", [], |r| r.get::<_, String>(0))
            .unwrap();
        s.save_note(id, None, "t", "two", 2).unwrap();
        let second = s
            .conn
            .query_row("SELECT op_id FROM outbox", [], |r| r.get::<_, String>(0))
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(s.pending_count().unwrap(), 1);
    }

    #[test]
    fn batches_stop_before_the_push_limit() {
        let (_d, mut s) = store();
        for i in 0..3 {
            s.save_note(Uuid::now_v7(), None, "t", &"x".repeat(3 << 20), i)
                .unwrap();
        }
        // Quotes take two bytes each in JSON.
        s.save_note(Uuid::now_v7(), None, "t", &"\"".repeat(3 << 20), 9)
            .unwrap();
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let b = s.next_unsent_batch(500).unwrap();
            (!b.is_empty()).then(|| {
                serde_json::to_vec(&latchkey_protocol::PushRequest { ops: b })
                    .unwrap()
                    .len()
            })
        })
        .collect();
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= MAX_PUSH_BYTES), "{sizes:?}");
    }

    #[test]
    fn a_refused_op_is_unsent_again_or_replaced_by_its_follow_up() {
        let (_d, mut s) = store();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        s.save_note(a, None, "a", "1", 1).unwrap();
        s.save_note(b, None, "b", "1", 1).unwrap();
        let sent = s.next_batch(10).unwrap();
        s.save_note(b, None, "b", "2", 2).unwrap();
        s.unsend(sent[0].op_id()).unwrap();
        s.unsend(sent[1].op_id()).unwrap();
        let again = s.next_batch(10).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].op_id(), sent[0].op_id());
        let Op::Upsert { body, base_rev, .. } = &again[1] else {
            panic!()
        };
        assert_eq!((body.as_str(), *base_rev), ("2", 0));
    }

    #[test]
    fn a_conflict_without_the_servers_note_pulls_it_again() {
        let (_d, mut s) = store();
        let id = Uuid::now_v7();
        s.apply_pull(&PullResponse {
            changes: vec![],
            cursor: 40,
            more: false,
        })
        .unwrap();
        s.save_note(id, None, "t", "b", 1).unwrap();
        let batch = s.next_batch(10).unwrap();
        let mut conflict = applied(&batch[0], 30);
        conflict.status = OpStatus::Conflict;
        s.apply_push(&[conflict]).unwrap();
        assert_eq!(s.cursor().unwrap(), 29);
    }

    #[test]
    fn oversized_input_is_refused() {
        let (_d, mut s) = store();
        let long = "x".repeat(MAX_TITLE_BYTES + 1);
        assert_eq!(
            s.save_note(Uuid::new_v4(), None, &long, "", 1)
                .unwrap_err()
                .code(),
            "invalid_input"
        );
    }
}
