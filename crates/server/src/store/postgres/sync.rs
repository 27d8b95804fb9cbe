//! Notes in PostgreSQL: pushes, pulls, history and the numbered rev
//! changes. A push costs a fixed number of round trips whatever its size:
//! it locks the user's row, reads every op result and note its ops name in
//! one go (and the ids conflict copies would take, when one may conflict),
//! decides each op in memory by the rules both stores share
//! ([`notes::apply_op`]), and writes the outcome with one array-valued
//! statement per table. Statements that do not wait on each other's answer
//! are pipelined (sent together, run in order).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{GenericClient, Transaction};
use futures_util::future::try_join_all;
use latchkey_protocol::sync::{HISTORY_KEPT_VERSIONS, PULL_PAGE_BYTES};
use latchkey_protocol::{Change, NoteVersion, Op, PullResponse, PushResponse};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{REV_CHANGES_LOCK, query, text};
use crate::store::notes::{self, OpRow, conflict_copy_id, parse_note_id};
use crate::store::{
    HISTORY_ANSWER_BYTES, PullOutcome, Result, RevChange, ServerNoteBudget, StoreError,
};

const LOCK_USER: &str = "SELECT last_rev FROM users WHERE id = $1 FOR UPDATE";

// Rows looked up by key are probed one key at a time (`LATERAL … LIMIT 1`
// keeps the planner from joining otherwise). As `key = ANY($2)`, a plan
// made while a table was young and its statistics missing read every row
// of the user's and compared it with every key: a push of 500 ops into a
// fresh database took five times as long, until autovacuum's first
// ANALYZE (BENCHMARKS.md "Issue 14").

const SEEN_OPS: &str = "SELECT o.* FROM unnest($2::text[]) AS k(id) CROSS JOIN LATERAL \
     (SELECT op_id, note_id, rev, conflict, conflict_copy_id, copy_rev, server_note FROM ops \
      WHERE user_id = $1 AND op_id = k.id LIMIT 1) AS o";

const NOTES_TOUCHED: &str = "SELECT n.* FROM unnest($2::text[]) AS k(id) CROSS JOIN LATERAL \
     (SELECT note_id, rev, title, body, deleted, updated_at, conflict_of FROM notes \
      WHERE user_id = $1 AND note_id = k.id LIMIT 1) AS n";

const KEEP_VERSIONS: &str = "INSERT INTO note_versions \
     (user_id, note_id, rev, title, body, deleted, updated_at) \
     SELECT $1, * FROM unnest($2::text[], $3::int8[], $4::bytea[], $5::bytea[], $6::bool[], \
     $7::int8[])";

/// Forgets the versions of these notes past the newest
/// [`HISTORY_KEPT_VERSIONS`] (`$3`), note by note as above.
const FORGET_VERSIONS: &str = "DELETE FROM note_versions v USING unnest($2::text[]) AS k(id) \
     CROSS JOIN LATERAL (SELECT rev FROM note_versions WHERE user_id = $1 AND note_id = k.id \
      ORDER BY rev DESC OFFSET $3) AS old \
     WHERE v.user_id = $1 AND v.note_id = k.id AND v.rev = old.rev";

/// Notes the push's reads did not find: a plain insert (no other
/// transaction writes the user's notes while the push holds their row).
const ADD_NOTES: &str = "INSERT INTO notes \
     (user_id, note_id, rev, title, body, deleted, updated_at, conflict_of) \
     SELECT $1, * FROM unnest($2::text[], $3::int8[], $4::bytea[], $5::bytea[], $6::bool[], \
     $7::int8[], $8::text[])";

/// Notes that were there, found through their key as an upsert finds them
/// (a speculative insert costs a third more, so new notes go apart). As
/// SQLite's upsert: a note keeps its `conflict_of`.
const REPLACE_NOTES: &str = "INSERT INTO notes \
     (user_id, note_id, rev, title, body, deleted, updated_at) \
     SELECT $1, * FROM unnest($2::text[], $3::int8[], $4::bytea[], $5::bytea[], $6::bool[], \
     $7::int8[]) \
     ON CONFLICT (user_id, note_id) DO UPDATE SET rev = excluded.rev, title = excluded.title, \
     body = excluded.body, deleted = excluded.deleted, updated_at = excluded.updated_at";

const RECORD_OPS: &str = "INSERT INTO ops \
     (user_id, op_id, note_id, rev, conflict, conflict_copy_id, copy_rev, server_note, created_at) \
     SELECT $1, o.*, $9 FROM unnest($2::text[], $3::text[], $4::int8[], $5::bool[], $6::text[], \
     $7::int8[], $8::text[]) AS o";

const TAKE_REV_CHANGE: &str = "SELECT pg_advisory_xact_lock($1)";

const MOVE_REV: &str =
    "UPDATE users SET last_rev = $2, change_seq = nextval('rev_changes') WHERE id = $1";

/// A statement's parameters, owned by the list of statements.
fn args<'a>(params: &[&'a (dyn ToSql + Sync)]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.to_vec()
}

/// Runs the prepared `statements` with their parameters, pipelined: all
/// are sent before the first answer is awaited, and the server runs them
/// in order. Their rows, in the same order.
async fn pipelined(
    tx: &Transaction<'_>,
    statements: &[(&str, Vec<&(dyn ToSql + Sync)>)],
) -> Result<Vec<Vec<Row>>> {
    // Prepared first (cached after a connection's first push): a prepare
    // waits for its answer, which would let a later statement overtake.
    let mut prepared = Vec::with_capacity(statements.len());
    for (sql, _) in statements {
        prepared.push(tx.prepare_cached(sql).await?);
    }
    let runs = prepared
        .iter()
        .zip(statements)
        .map(|(statement, (_, params))| tx.query(statement, params));
    Ok(try_join_all(runs).await?)
}

/// A note version as the store reads it back: the columns `note_id, rev,
/// title, body, deleted, updated_at, conflict_of` from column `first` on.
fn change_row(r: &Row, first: usize) -> Result<Change> {
    let note_id: String = r.try_get(first)?;
    let conflict_of: Option<String> = r.try_get(first + 6)?;
    Ok(Change {
        note_id: parse_note_id(&note_id)?,
        rev: r.try_get(first + 1)?,
        title: text(r.try_get(first + 2)?, "a title")?,
        body: text(r.try_get(first + 3)?, "a body")?,
        deleted: r.try_get(first + 4)?,
        updated_at: r.try_get(first + 5)?,
        conflict_of: conflict_of.as_deref().map(parse_note_id).transpose()?,
    })
}

/// Applies a validated push in order, in the caller's transaction.
pub(super) async fn push(
    tx: &Transaction<'_>,
    user_id: &str,
    ops: &[Op],
    now: i64,
) -> Result<PushResponse> {
    let op_ids: Vec<String> = ops.iter().map(|op| op.op_id().to_string()).collect();
    let note_ids: Vec<String> = ops.iter().map(|op| op.note_id().to_string()).collect();
    // The user's row first: the reads after it see every push of theirs
    // committed before, and none commits until this one does.
    let read = pipelined(
        tx,
        &[
            (LOCK_USER, args(&[&user_id])),
            (SEEN_OPS, args(&[&user_id, &op_ids])),
            (NOTES_TOUCHED, args(&[&user_id, &note_ids])),
        ],
    )
    .await?;
    let [locked, seen, current] = <[Vec<Row>; 3]>::try_from(read)
        .map_err(|_| StoreError::Corrupt("a pipeline lost a statement".into()))?;
    let first_rev: i64 = match locked.first() {
        Some(row) => row.try_get(0)?,
        None => return Err(StoreError::Corrupt(format!("no user {user_id:?}"))),
    };
    let mut batch = Batch {
        seen: HashMap::with_capacity(seen.len()),
        notes: HashMap::with_capacity(current.len()),
        ..Batch::default()
    };
    for row in &seen {
        let op_id: String = row.try_get(0)?;
        let op_row = OpRow {
            note_id: row.try_get(1)?,
            rev: row.try_get(2)?,
            conflict: row.try_get(3)?,
            conflict_copy_id: row.try_get(4)?,
            copy_rev: row.try_get(5)?,
            server_note: row.try_get(6)?,
        };
        batch.seen.insert(op_id, op_row);
    }
    batch.add_stored(&current)?;
    // The ids the conflict copies would take, looked up only when a
    // conflict may happen: a round trip more for a push that conflicts,
    // none for one that does not.
    let copies = batch.copies_to_look_up(ops, &op_ids);
    if !copies.is_empty() {
        batch.add_stored(&query(tx, NOTES_TOUCHED, &[&user_id, &copies]).await?)?;
    }

    let mut last_rev = first_rev;
    let mut results = Vec::with_capacity(ops.len());
    // Applied as each result is made, so that the answer never holds more
    // server notes than it may send.
    let mut budget = ServerNoteBudget::default();
    for (op, op_id) in ops.iter().zip(&op_ids) {
        let mut result = match batch.seen.get(op_id) {
            Some(first) => first.clone().duplicate(op_id)?,
            None => batch.apply(op, op_id, &mut last_rev, now)?,
        };
        budget.admit(&mut result);
        results.push(result);
    }
    batch.write(tx, user_id, first_rev, last_rev, now).await?;
    Ok(PushResponse {
        results,
        cursor: last_rev,
    })
}

/// A push being decided: what the store held, and what it will write.
#[derive(Default)]
struct Batch {
    /// Results of ops seen before, by op id (this push's own, once made).
    seen: HashMap<String, OpRow>,
    /// The notes as they stand, this push's writes included.
    notes: HashMap<Uuid, Change>,
    /// The notes that stood before the push.
    stored: HashSet<Uuid>,
    /// Notes written.
    written: HashSet<Uuid>,
    /// Versions replaced, to keep in their notes' history.
    replaced: Vec<Change>,
    /// Results to record, in op order.
    recorded: Vec<(String, OpRow)>,
}

impl Batch {
    /// Notes as the store holds them (rows of [`NOTES_TOUCHED`]).
    fn add_stored(&mut self, rows: &[Row]) -> Result<()> {
        for row in rows {
            let note = change_row(row, 0)?;
            self.stored.insert(note.note_id);
            self.notes.insert(note.note_id, note);
        }
        Ok(())
    }

    /// The conflict copy ids of the upserts that may conflict: those whose
    /// base is not the stored note's rev (0 for none), and those whose note
    /// an earlier op of the push names (its rev may have moved). Any other
    /// is applied as based, and makes no copy.
    fn copies_to_look_up(&self, ops: &[Op], op_ids: &[String]) -> Vec<String> {
        let mut named = HashSet::with_capacity(ops.len());
        let mut copies = Vec::new();
        for (op, seen_id) in ops.iter().zip(op_ids) {
            let earlier = !named.insert(op.note_id());
            if let Op::Upsert {
                op_id, base_rev, ..
            } = op
            {
                let stored_rev = self.notes.get(&op.note_id()).map_or(0, |n| n.rev);
                if !self.seen.contains_key(seen_id) && (earlier || *base_rev != stored_rev) {
                    copies.push(conflict_copy_id(op_id).to_string());
                }
            }
        }
        copies
    }

    /// Applies one op not seen before, in memory.
    fn apply(
        &mut self,
        op: &Op,
        op_id: &str,
        last_rev: &mut i64,
        now: i64,
    ) -> Result<latchkey_protocol::OpResult> {
        let current = self.notes.get(&op.note_id()).cloned();
        let notes = &self.notes;
        let copy_taken = |id: Uuid| Ok(notes.contains_key(&id));
        let applied = notes::apply_op(op, current, copy_taken, last_rev, now)?;
        if let Some(replaced) = applied.replaced {
            self.replaced.push(replaced);
        }
        if let Some(note) = applied.written {
            self.written.insert(note.note_id);
            self.notes.insert(note.note_id, note);
        }
        let row = OpRow::of(op_id, &applied.result)?;
        self.seen.insert(op_id.to_owned(), row.clone());
        self.recorded.push((op_id.to_owned(), row));
        Ok(applied.result)
    }

    /// Writes what the push decided: kept versions (and the history past
    /// its length forgotten), the notes as they now stand, the op results,
    /// and the user's new rev, numbered as a rev change.
    async fn write(
        &self,
        tx: &Transaction<'_>,
        user_id: &str,
        first_rev: i64,
        last_rev: i64,
        now: i64,
    ) -> Result<()> {
        let versions = Columns::of(&self.replaced);
        let version_notes: Vec<String> = {
            let unique: HashSet<&String> = versions.note_ids.iter().collect();
            unique.into_iter().cloned().collect()
        };
        let kept = HISTORY_KEPT_VERSIONS as i64;
        let (rewritten, added): (Vec<&Change>, Vec<&Change>) = self
            .written
            .iter()
            .filter_map(|id| self.notes.get(id))
            .partition(|note| self.stored.contains(&note.note_id));
        let (rewritten, added) = (Columns::of(rewritten), Columns::of(added));
        let ops = OpColumns::of(&self.recorded);

        let mut statements: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
        if !versions.note_ids.is_empty() {
            statements.push((KEEP_VERSIONS, versions.params(&user_id)));
            statements.push((FORGET_VERSIONS, args(&[&user_id, &version_notes, &kept])));
        }
        if !added.note_ids.is_empty() {
            let mut params = added.params(&user_id);
            params.push(&added.conflict_of);
            statements.push((ADD_NOTES, params));
        }
        if !rewritten.note_ids.is_empty() {
            statements.push((REPLACE_NOTES, rewritten.params(&user_id)));
        }
        if !ops.op_ids.is_empty() {
            statements.push((RECORD_OPS, ops.params(&user_id, &now)));
        }
        if last_rev != first_rev {
            statements.push((TAKE_REV_CHANGE, args(&[&REV_CHANGES_LOCK])));
            statements.push((MOVE_REV, args(&[&user_id, &last_rev])));
        }
        pipelined(tx, &statements).await?;
        Ok(())
    }
}

/// Note versions as one array per column, for `unnest`.
struct Columns<'a> {
    note_ids: Vec<String>,
    revs: Vec<i64>,
    titles: Vec<&'a [u8]>,
    bodies: Vec<&'a [u8]>,
    deleted: Vec<bool>,
    updated_at: Vec<i64>,
    conflict_of: Vec<Option<String>>,
}

impl<'a> Columns<'a> {
    fn of(changes: impl IntoIterator<Item = &'a Change>) -> Self {
        let mut c = Columns {
            note_ids: Vec::new(),
            revs: Vec::new(),
            titles: Vec::new(),
            bodies: Vec::new(),
            deleted: Vec::new(),
            updated_at: Vec::new(),
            conflict_of: Vec::new(),
        };
        for n in changes {
            c.note_ids.push(n.note_id.to_string());
            c.revs.push(n.rev);
            c.titles.push(n.title.as_bytes());
            c.bodies.push(n.body.as_bytes());
            c.deleted.push(n.deleted);
            c.updated_at.push(n.updated_at);
            c.conflict_of.push(n.conflict_of.map(|u| u.to_string()));
        }
        c
    }

    /// `user_id` and the columns every version has (not `conflict_of`).
    fn params<'p>(&'p self, user_id: &'p &str) -> Vec<&'p (dyn ToSql + Sync)> {
        args(&[
            user_id,
            &self.note_ids,
            &self.revs,
            &self.titles,
            &self.bodies,
            &self.deleted,
            &self.updated_at,
        ])
    }
}

/// Op results as one array per column, for `unnest`.
struct OpColumns<'a> {
    op_ids: Vec<&'a str>,
    note_ids: Vec<&'a str>,
    revs: Vec<i64>,
    conflict: Vec<bool>,
    copy_ids: Vec<Option<&'a str>>,
    copy_revs: Vec<Option<i64>>,
    server_notes: Vec<Option<&'a str>>,
}

impl<'a> OpColumns<'a> {
    fn of(recorded: &'a [(String, OpRow)]) -> Self {
        OpColumns {
            op_ids: recorded.iter().map(|(id, _)| id.as_str()).collect(),
            note_ids: recorded.iter().map(|(_, r)| r.note_id.as_str()).collect(),
            revs: recorded.iter().map(|(_, r)| r.rev).collect(),
            conflict: recorded.iter().map(|(_, r)| r.conflict).collect(),
            copy_ids: recorded
                .iter()
                .map(|(_, r)| r.conflict_copy_id.as_deref())
                .collect(),
            copy_revs: recorded.iter().map(|(_, r)| r.copy_rev).collect(),
            server_notes: recorded
                .iter()
                .map(|(_, r)| r.server_note.as_deref())
                .collect(),
        }
    }

    fn params<'p>(&'p self, user_id: &'p &str, now: &'p i64) -> Vec<&'p (dyn ToSql + Sync)> {
        args(&[
            user_id,
            &self.op_ids,
            &self.note_ids,
            &self.revs,
            &self.conflict,
            &self.copy_ids,
            &self.copy_revs,
            &self.server_notes,
            now,
        ])
    }
}

/// The user's latest rev and a page of changes after `since`, in one
/// statement (one snapshot). The page is cut as SQLite's is: at `limit`
/// changes, or once the changes before one reach [`PULL_PAGE_BYTES`]; the
/// rows past the cut come without their text, only to say there is more.
const PULL: &str = "WITH latest AS (SELECT coalesce((SELECT last_rev FROM users WHERE id = $1), 0) \
     AS rev), \
     page AS (SELECT n.*, coalesce(sum(octet_length(n.title) + octet_length(n.body) + 200) \
       OVER (ORDER BY n.rev ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
       FROM (SELECT note_id, rev, title, body, deleted, updated_at, conflict_of FROM notes \
             WHERE user_id = $1 AND rev > $2 ORDER BY rev LIMIT $3) n) \
     SELECT latest.rev, p.before, p.note_id, p.rev, \
       CASE WHEN p.before < $4 THEN p.title END, CASE WHEN p.before < $4 THEN p.body END, \
       p.deleted, p.updated_at, p.conflict_of \
     FROM latest LEFT JOIN page p ON true ORDER BY p.rev";

/// The user's changes after `since`, oldest first.
pub(super) async fn pull(
    c: &impl GenericClient,
    user_id: &str,
    since: i64,
    limit: u32,
) -> Result<PullOutcome> {
    let page_bytes = PULL_PAGE_BYTES as i64;
    let rows = query(
        c,
        PULL,
        &[&user_id, &since, &(i64::from(limit) + 1), &page_bytes],
    )
    .await?;
    let latest: i64 = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    if since > latest {
        return Ok(PullOutcome::CursorAhead { latest });
    }
    let mut changes = Vec::new();
    let mut more = false;
    for row in &rows {
        let Some(before) = row.try_get::<_, Option<i64>>(1)? else {
            break;
        };
        if changes.len() == limit as usize || before >= page_bytes {
            more = true;
            break;
        }
        changes.push(change_row(row, 2)?);
    }
    let cursor = changes.last().map_or(since, |c: &Change| c.rev);
    Ok(PullOutcome::Page(PullResponse {
        changes,
        cursor,
        more,
    }))
}

/// A note's earlier versions, newest first, in one statement (one
/// snapshot): no row if the user has no such note, one empty row if it has
/// no history. Cut as SQLite's: versions are kept until their sizes pass
/// [`HISTORY_ANSWER_BYTES`], the newest always.
const HISTORY: &str = "WITH v AS (SELECT x.*, \
       sum(octet_length(x.title) + octet_length(x.body) + 100) \
         OVER (ORDER BY x.rev DESC ROWS UNBOUNDED PRECEDING) AS upto, \
       row_number() OVER (ORDER BY x.rev DESC) AS n \
     FROM (SELECT rev, title, body, deleted, updated_at FROM note_versions \
           WHERE user_id = $1 AND note_id = $2 ORDER BY rev DESC LIMIT $3) x) \
     SELECT v.rev, v.title, v.body, v.deleted, v.updated_at \
     FROM notes n LEFT JOIN v ON v.n = 1 OR v.upto <= $4 \
     WHERE n.user_id = $1 AND n.note_id = $2 ORDER BY v.rev DESC";

pub(super) async fn history(
    c: &impl GenericClient,
    user_id: &str,
    note_id: Uuid,
) -> Result<Option<Vec<NoteVersion>>> {
    let note_id = note_id.to_string();
    let rows = query(
        c,
        HISTORY,
        &[
            &user_id,
            &note_id,
            &(HISTORY_KEPT_VERSIONS as i64),
            &(HISTORY_ANSWER_BYTES as i64),
        ],
    )
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut versions = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(rev) = row.try_get::<_, Option<i64>>(0)? else {
            break;
        };
        versions.push(NoteVersion {
            rev,
            title: text(row.try_get(1)?, "a title")?,
            body: text(row.try_get(2)?, "a body")?,
            deleted: row.try_get(3)?,
            updated_at: row.try_get(4)?,
        });
    }
    Ok(Some(versions))
}

pub(super) async fn rev_changes_since(
    c: &impl GenericClient,
    seq: i64,
    limit: usize,
) -> Result<Vec<RevChange>> {
    let rows = query(
        c,
        "SELECT change_seq, id, last_rev FROM users WHERE change_seq > $1 \
         ORDER BY change_seq LIMIT $2",
        &[&seq, &(limit as i64)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RevChange {
                seq: r.try_get(0)?,
                user_id: r.try_get(1)?,
                rev: r.try_get(2)?,
            })
        })
        .collect()
}
