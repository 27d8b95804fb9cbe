//! The SQLite side of `migrate-store`: checks that the source is a
//! Latchkey database this server can read (migrating an older one, as the
//! server's next start would), then reads it in one read transaction on a
//! thread of its own, handing over batches of rows, then its sums.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};
use tokio::sync::mpsc;

use super::{BATCH_BYTES, BATCH_ROWS, Digest, Kind, Row, TABLES, Table, TableSum, Val};
use crate::store::sqlite::{MIGRATIONS, SqliteStore};
use crate::store::{Result, StoreError};

/// What the reading thread hands over, in this order: every table's rows
/// in batches (tables in [`TABLES`]' order), then [`Read::Done`].
pub(super) enum Read {
    /// Rows of `TABLES[table]`, in key order.
    Rows { table: usize, rows: Vec<Row> },
    /// Every row read: each table's sum, and SQLite's high-water marks of
    /// its `AUTOINCREMENT` keys, by table.
    Done {
        sums: Vec<TableSum>,
        counters: HashMap<&'static str, i64>,
    },
}

/// Opens `path` read-only; fails, saying so, if it is no database.
fn open_read_only(path: &Path) -> Result<Connection> {
    let open_err = |source: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        source: Box::new(source),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(open_err)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(open_err)?;
    Ok(conn)
}

/// Checks, reading only, that `path` is a Latchkey database no newer
/// than this server; its schema version.
pub(super) fn check(path: &Path) -> Result<i64> {
    std::fs::metadata(path).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        source: Box::new(e),
    })?;
    let conn = open_read_only(path)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::TooNew {
            found: version,
            supported,
        });
    }
    let has_users = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if version < 1 || !has_users {
        return Err(StoreError::NotLatchkey {
            path: path.display().to_string(),
        });
    }
    Ok(version)
}

/// Whether a source of schema `version` must be migrated first.
pub(super) fn is_older(version: i64) -> bool {
    version < MIGRATIONS.len() as i64
}

/// Brings the [`check`]ed database at `path` to this server's schema, as
/// the server's next start would.
pub(super) fn migrate(path: &Path) -> Result<()> {
    drop(SqliteStore::open(path)?);
    Ok(())
}

/// The reading thread, seen from the async side.
pub(super) struct Reader {
    rx: mpsc::Receiver<Result<Read>>,
}

impl Reader {
    /// Starts reading `path` (already [`prepare`]d) on a thread of its own,
    /// a batch or two ahead of the taker.
    pub(super) fn start(path: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel(2);
        let shown = path.display().to_string();
        let spawned = std::thread::Builder::new()
            .name("migrate-source".into())
            .spawn({
                let tx = tx.clone();
                move || {
                    if let Err(e) = read_all(&path, &tx) {
                        // The taker may be gone (it failed first): fine.
                        let _ = tx.blocking_send(Err(e));
                    }
                }
            });
        if let Err(e) = spawned {
            let _ = tx.try_send(Err(StoreError::Open {
                path: shown,
                source: Box::new(e),
            }));
        }
        Self { rx }
    }

    /// The next batch, or the end.
    pub(super) async fn next(&mut self) -> Result<Read> {
        self.rx.recv().await.unwrap_or_else(|| {
            Err(StoreError::Corrupt(
                "reading the source stopped half way".into(),
            ))
        })
    }
}

/// The thread's work: one read transaction over every table.
fn read_all(path: &Path, out: &mpsc::Sender<Result<Read>>) -> Result<()> {
    let conn = open_read_only(path)?;
    let tx = conn.unchecked_transaction()?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != MIGRATIONS.len() as i64 {
        return Err(StoreError::Corrupt(format!(
            "the source's schema version changed to {version} while it was being copied"
        )));
    }
    check_columns(&tx)?;
    let mut sums = Vec::with_capacity(TABLES.len());
    for (i, table) in TABLES.iter().enumerate() {
        let sum = read_table(&tx, table, |rows| {
            out.blocking_send(Ok(Read::Rows { table: i, rows })).is_ok()
        })?;
        let Some(sum) = sum else {
            // The taker is gone.
            return Ok(());
        };
        sums.push(sum);
    }
    let counters = counters(&tx)?;
    let _ = out.blocking_send(Ok(Read::Done { sums, counters }));
    Ok(())
}

/// Every table of [`TABLES`] has exactly the columns, of the types, the
/// copy knows.
pub(super) fn check_columns(conn: &Connection) -> Result<()> {
    for table in TABLES {
        let mut stmt = conn.prepare("SELECT name, type FROM pragma_table_info(?1)")?;
        let mut found: Vec<(String, String)> = stmt
            .query_map([table.name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        found.sort();
        let mut expected: Vec<(String, String)> = table
            .columns
            .iter()
            .map(|(name, kind)| (name.to_string(), kind.sqlite_type().to_owned()))
            .collect();
        expected.sort();
        if found != expected {
            return Err(StoreError::Corrupt(format!(
                "the source's table {} does not have the columns this server knows",
                table.name
            )));
        }
    }
    Ok(())
}

/// Reads `table` in key order, handing batches to `take` (which says
/// false to stop: then None), and sums it.
pub(super) fn read_table(
    conn: &Connection,
    table: &Table,
    mut take: impl FnMut(Vec<Row>) -> bool,
) -> Result<Option<TableSum>> {
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        table.column_list(),
        table.name,
        table.key.join(", ")
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut digest = Digest::new(table.name);
    let (mut batch, mut bytes) = (Vec::new(), 0);
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(table.columns.len());
        for (i, (column, kind)) in table.columns.iter().enumerate() {
            let value = value(r.get_ref(i)?, *kind).map_err(|found| {
                StoreError::Corrupt(format!(
                    "{}.{column} holds {found} in the source",
                    table.name
                ))
            })?;
            bytes += value.weight();
            row.push(value);
        }
        digest.add(&row);
        batch.push(row);
        if batch.len() >= BATCH_ROWS || bytes >= BATCH_BYTES {
            if !take(std::mem::take(&mut batch)) {
                return Ok(None);
            }
            bytes = 0;
        }
    }
    if !batch.is_empty() && !take(batch) {
        return Ok(None);
    }
    Ok(Some(digest.finish()))
}

/// A stored value as the copy takes it, or what it holds instead (never
/// the value itself: it may be a secret).
fn value(v: ValueRef<'_>, kind: Kind) -> std::result::Result<Val, &'static str> {
    match (kind, v) {
        (_, ValueRef::Null) => Ok(Val::Null),
        (Kind::Text, ValueRef::Text(t)) => match std::str::from_utf8(t) {
            // PostgreSQL's TEXT holds no NUL.
            Ok(s) if !s.contains('\0') => Ok(Val::Bytes(t.to_vec())),
            Ok(_) => Err("text with a NUL character"),
            Err(_) => Err("text that is not UTF-8"),
        },
        (Kind::Utf8, ValueRef::Text(t)) | (Kind::Bytes, ValueRef::Blob(t)) => {
            Ok(Val::Bytes(t.to_vec()))
        }
        (Kind::Int, ValueRef::Integer(i)) => Ok(Val::Int(i)),
        (Kind::Bool, ValueRef::Integer(i)) => Ok(Val::Int(i64::from(i != 0))),
        (Kind::Small, ValueRef::Integer(i)) if i16::try_from(i).is_ok() => Ok(Val::Int(i)),
        (Kind::Small, ValueRef::Integer(_)) => Err("an integer out of range"),
        (_, ValueRef::Integer(_)) => Err("an integer where it should not"),
        (_, ValueRef::Real(_)) => Err("a real number"),
        (_, ValueRef::Text(_)) => Err("text where it should not"),
        (_, ValueRef::Blob(_)) => Err("a blob where it should not"),
    }
}

/// SQLite's high-water marks of `AUTOINCREMENT` keys, by table (none
/// before the first row of a table).
fn counters(conn: &Connection) -> Result<HashMap<&'static str, i64>> {
    let mut found = HashMap::new();
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(found);
    }
    for table in TABLES {
        let seq: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                [table.name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(seq) = seq {
            found.insert(table.name, seq);
        }
    }
    Ok(found)
}

/// Every table's sum, read afresh (tests).
#[cfg(test)]
pub(super) fn sums(path: &Path) -> Result<Vec<TableSum>> {
    let conn = open_read_only(path)?;
    let tx = conn.unchecked_transaction()?;
    TABLES
        .iter()
        .map(|table| Ok(read_table(&tx, table, |_| true)?.expect("never stopped")))
        .collect()
}
