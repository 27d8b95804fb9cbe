//! `latchkey-server migrate-store`: a SQLite server's whole state copied
//! into a PostgreSQL database, in one PostgreSQL transaction, and checked
//! table by table before it commits.
//!
//! The source is read in one SQLite read transaction (one committed state)
//! on a thread of its own ([`source`]), in batches that the target inserts
//! as arrays (`unnest`: one statement per few thousand rows) while the
//! next batch is read ([`target`]). Then both sides are summed the same
//! way: every row, in its primary key's order, as [`Val`]s into a SHA-256
//! ([`Digest`]), with its count. The source is summed from the rows it
//! read; the target from its rows read back inside the transaction. Any
//! difference rolls everything back.
//!
//! # The tables
//! [`TABLES`] maps every table of SQLite's schema (all its migrations) to
//! its PostgreSQL counterpart, in the order they are filled (a table after
//! those it refers to). Both sides' columns are checked against it before
//! anything is copied, and a test checks that it names every table of
//! both schemas. Where the two differ:
//!
//! | table | SQLite | PostgreSQL |
//! |---|---|---|
//! | `users` | `change_seq` numbered `max + 1` | numbered by the sequence `rev_changes`, moved past the copied numbers |
//! | `sessions` | `device_name` TEXT | BYTEA (its UTF-8) |
//! | `refresh_tokens` | BLOBs | BYTEAs; spent (`used_at`) and retired (`retired_at`) state as is |
//! | `revocations`, `signing_keys`, `login_attempts` | `AUTOINCREMENT` | `GENERATED ALWAYS AS IDENTITY`: inserted with `OVERRIDING SYSTEM VALUE`, the identity moved past both the copied numbers and SQLite's high-water mark (`sqlite_sequence`: numbers of deleted rows are not handed out again) |
//! | `notes`, `note_versions` | titles, bodies TEXT; `deleted` 0/1 | BYTEA (their UTF-8); BOOLEAN |
//! | `ops` | `conflict` 0/1 | BOOLEAN |
//!
//! Every table is copied, `login_attempts` too: the throttling windows are
//! short, but a guesser's budget should not start afresh because the
//! server moved. PostgreSQL's `schema_version` is the target's own (its
//! migrations write it); SQLite's `sqlite_sequence` is read for the
//! identities, not copied.

mod source;
mod target;

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::{PgStore, Result, StoreError, without_password};

/// How a column is kept on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TEXT on both sides (ids, names, hashes of passwords, JSON).
    Text,
    /// TEXT in SQLite, BYTEA (the same bytes) in PostgreSQL: text a
    /// client sent, which may hold NUL.
    Utf8,
    /// BLOB, BYTEA.
    Bytes,
    /// INTEGER, BIGINT.
    Int,
    /// INTEGER (0 false, anything else true, as the store reads it),
    /// BOOLEAN.
    Bool,
    /// INTEGER, SMALLINT.
    Small,
}

impl Kind {
    /// The column's declared type in SQLite's schema.
    fn sqlite_type(self) -> &'static str {
        match self {
            Kind::Text | Kind::Utf8 => "TEXT",
            Kind::Bytes => "BLOB",
            Kind::Int | Kind::Bool | Kind::Small => "INTEGER",
        }
    }

    /// The column's type in PostgreSQL (as `information_schema` names it).
    fn pg_type(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Utf8 | Kind::Bytes => "bytea",
            Kind::Int => "bigint",
            Kind::Bool => "boolean",
            Kind::Small => "smallint",
        }
    }
}

/// A column numbered by a counter that the target must move past the
/// copied rows, so that the next number handed out is a new one.
#[derive(Debug, Clone, Copy)]
enum Counter {
    /// An `AUTOINCREMENT` key in SQLite, an identity in PostgreSQL.
    Identity(&'static str),
    /// A column PostgreSQL numbers from a sequence of its own.
    Sequence {
        column: &'static str,
        sequence: &'static str,
    },
}

/// One table, as both sides have it.
#[derive(Debug)]
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// The primary key: the order rows are copied and summed in.
    key: &'static [&'static str],
    counter: Option<Counter>,
}

impl Table {
    fn kind_of(&self, column: &str) -> Kind {
        self.columns
            .iter()
            .find(|(name, _)| *name == column)
            .map_or(Kind::Text, |(_, kind)| *kind)
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

use Kind::{Bool, Bytes, Int, Small, Text, Utf8};

/// Every table of both schemas, in the order they are filled.
const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("id", Text),
            ("username", Text),
            ("password_hash", Text),
            ("created_at", Int),
            ("last_rev", Int),
            ("change_seq", Int),
        ],
        key: &["id"],
        counter: Some(Counter::Sequence {
            column: "change_seq",
            sequence: "rev_changes",
        }),
    },
    Table {
        name: "sessions",
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("revoked_at", Int),
            ("revoked_reason", Text),
            ("device_name", Utf8),
            ("last_seen_at", Int),
        ],
        key: &["id"],
        counter: None,
    },
    Table {
        name: "refresh_tokens",
        columns: &[
            ("hash", Bytes),
            ("session_id", Text),
            ("parent", Bytes),
            ("created_at", Int),
            ("used_at", Int),
            ("retired_at", Int),
        ],
        key: &["hash"],
        counter: None,
    },
    Table {
        name: "revocations",
        columns: &[
            ("seq", Int),
            ("session_id", Text),
            ("reason", Text),
            ("at", Int),
        ],
        key: &["seq"],
        counter: Some(Counter::Identity("seq")),
    },
    Table {
        name: "signing_keys",
        columns: &[
            ("seq", Int),
            ("kid", Text),
            ("secret", Bytes),
            ("created_at", Int),
            ("retired_at", Int),
        ],
        key: &["seq"],
        counter: Some(Counter::Identity("seq")),
    },
    Table {
        name: "notes",
        columns: &[
            ("user_id", Text),
            ("note_id", Text),
            ("rev", Int),
            ("title", Utf8),
            ("body", Utf8),
            ("deleted", Bool),
            ("updated_at", Int),
            ("conflict_of", Text),
        ],
        key: &["user_id", "note_id"],
        counter: None,
    },
    Table {
        name: "note_versions",
        columns: &[
            ("user_id", Text),
            ("note_id", Text),
            ("rev", Int),
            ("title", Utf8),
            ("body", Utf8),
            ("deleted", Bool),
            ("updated_at", Int),
        ],
        key: &["user_id", "note_id", "rev"],
        counter: None,
    },
    Table {
        name: "ops",
        columns: &[
            ("user_id", Text),
            ("op_id", Text),
            ("note_id", Text),
            ("rev", Int),
            ("conflict", Bool),
            ("conflict_copy_id", Text),
            ("copy_rev", Int),
            ("server_note", Text),
            ("created_at", Int),
        ],
        key: &["user_id", "op_id"],
        counter: None,
    },
    Table {
        name: "login_attempts",
        columns: &[
            ("id", Int),
            ("user_key", Bytes),
            ("address", Text),
            ("started_at", Int),
            ("state", Small),
        ],
        key: &["id"],
        counter: Some(Counter::Identity("id")),
    },
];

/// A stored value as both sides are summed: text and bytes alike as
/// bytes, booleans as 0 and 1.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Null,
    Int(i64),
    Bytes(Vec<u8>),
}

impl Val {
    /// About what the value weighs in a batch.
    fn weight(&self) -> usize {
        match self {
            Val::Bytes(b) => b.len() + 16,
            _ => 16,
        }
    }
}

/// A row: one value per column of its [`Table`], in that order.
type Row = Vec<Val>;

/// A batch ends at this many rows, or at [`BATCH_BYTES`], whichever
/// comes first (one note may be 4 MiB).
const BATCH_ROWS: usize = 5_000;
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// What one side holds in one table: its rows counted and summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSum {
    pub table: &'static str,
    pub rows: u64,
    pub sha256: [u8; 32],
}

impl TableSum {
    /// The SHA-256 in hex.
    pub fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Sums one table's rows, fed in key order: the one function both sides'
/// rows go through.
struct Digest {
    table: &'static str,
    rows: u64,
    hasher: Sha256,
}

impl Digest {
    fn new(table: &'static str) -> Self {
        Self {
            table,
            rows: 0,
            hasher: Sha256::new(),
        }
    }

    /// Every value tagged, and bytes with their length, so that no two
    /// different rows feed the same bytes.
    fn add(&mut self, row: &[Val]) {
        self.rows += 1;
        for value in row {
            match value {
                Val::Null => self.hasher.update([0]),
                Val::Int(i) => {
                    self.hasher.update([1]);
                    self.hasher.update(i.to_be_bytes());
                }
                Val::Bytes(b) => {
                    self.hasher.update([2]);
                    self.hasher.update((b.len() as u64).to_be_bytes());
                    self.hasher.update(b);
                }
            }
        }
    }

    fn finish(self) -> TableSum {
        TableSum {
            table: self.table,
            rows: self.rows,
            sha256: self.hasher.finalize().into(),
        }
    }
}

/// The first table whose rows differ between `source` and `target`.
fn compare(source: &[TableSum], target: &[TableSum]) -> Result<()> {
    for table in TABLES {
        let find = |sums: &[TableSum]| sums.iter().find(|s| s.table == table.name).cloned();
        let (Some(s), Some(t)) = (find(source), find(target)) else {
            return Err(StoreError::CopyMismatch {
                table: table.name,
                detail: "it was not summed on both sides".into(),
            });
        };
        if s != t {
            return Err(StoreError::CopyMismatch {
                table: table.name,
                detail: format!(
                    "source {} rows, sha256 {}; target {} rows, sha256 {}",
                    s.rows,
                    s.hex(),
                    t.rows,
                    t.hex()
                ),
            });
        }
    }
    Ok(())
}

/// What a migration did.
#[derive(Debug, Clone)]
pub struct MigrateReport {
    /// Every table, as both sides hold it now.
    pub tables: Vec<TableSum>,
    /// The source's schema version, if it was older than this server's and
    /// was migrated before the copy.
    pub migrated_from: Option<i64>,
    pub took: Duration,
}

/// Copies the SQLite database `from` whole into the PostgreSQL database
/// `to` (migrated to this server's schema first), in one transaction that
/// commits only when every table sums the same on both sides. A target
/// holding any row is refused unless `replace`: then its rows are deleted
/// in the same transaction. A source of an older schema is migrated first
/// (once the target is known to be usable); one of the current schema is
/// only read.
pub async fn migrate_store(from: &Path, to: &str, replace: bool) -> Result<MigrateReport> {
    let started = Instant::now();
    let path = from.to_owned();
    let version = tokio::task::spawn_blocking(move || source::check(&path)).await??;
    let store = PgStore::open(to).await?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    target::prepare(&tx, &without_password(to), replace).await?;
    let migrated_from = if source::is_older(version) {
        let path = from.to_owned();
        tokio::task::spawn_blocking(move || source::migrate(&path)).await??;
        Some(version)
    } else {
        None
    };
    let mut reader = source::Reader::start(from.to_owned());
    let (source_sums, counters) = loop {
        match reader.next().await? {
            source::Read::Rows { table, rows } => target::insert(&tx, &TABLES[table], rows).await?,
            source::Read::Done { sums, counters } => break (sums, counters),
        }
    };
    target::move_counters(&tx, &counters).await?;
    let target_sums = target::sums(&tx).await?;
    compare(&source_sums, &target_sums)?;
    tx.commit().await?;
    Ok(MigrateReport {
        tables: target_sums,
        migrated_from,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests;
