//! The PostgreSQL side of `migrate-store`, all in the caller's
//! transaction: locks the tables, checks their columns and that they are
//! empty (or empties them), inserts each batch as arrays in one statement,
//! moves the counters past the copied numbers, and reads every table back
//! in key order to sum it.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::{Counter, Digest, Kind, Row, TABLES, Table, TableSum, Val};
use crate::store::{Result, StoreError};

/// Rows fetched at a time when a table is read back.
const FETCH_ROWS: i32 = 5_000;

/// How long the copy waits for the tables when something else (a server
/// left running on the target) is writing to them.
const LOCK_TIMEOUT: &str = "10s";

fn all_tables() -> String {
    TABLES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// Locks every table against writers until the transaction ends, checks
/// the columns, and refuses a target holding any row (`target` names it)
/// unless `replace`, which empties it.
pub(super) async fn prepare(tx: &Transaction<'_>, target: &str, replace: bool) -> Result<()> {
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; LOCK TABLE {} IN EXCLUSIVE MODE",
        all_tables()
    ))
    .await?;
    check_columns(tx).await?;
    let mut found = Vec::new();
    for table in TABLES {
        let sql = format!("SELECT count(*) FROM {}", table.name);
        let n: i64 = tx.query_one(&sql, &[]).await?.try_get(0)?;
        if n > 0 {
            found.push(format!("{}: {n}", table.name));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    if !replace {
        return Err(StoreError::TargetNotEmpty {
            target: target.to_owned(),
            found: found.join(", "),
        });
    }
    tx.batch_execute(&format!("TRUNCATE {} RESTART IDENTITY", all_tables()))
        .await?;
    Ok(())
}

/// Every table of [`TABLES`] has exactly the columns, of the types, the
/// copy knows.
pub(super) async fn check_columns(tx: &Transaction<'_>) -> Result<()> {
    let rows = tx
        .query(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns WHERE table_schema = current_schema()",
            &[],
        )
        .await?;
    let mut found: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for r in &rows {
        found
            .entry(r.try_get(0)?)
            .or_default()
            .push((r.try_get(1)?, r.try_get(2)?));
    }
    for table in TABLES {
        let mut columns = found.remove(table.name).unwrap_or_default();
        columns.sort();
        let mut expected: Vec<(String, String)> = table
            .columns
            .iter()
            .map(|(name, kind)| (name.to_string(), kind.pg_type().to_owned()))
            .collect();
        expected.sort();
        if columns != expected {
            return Err(StoreError::Corrupt(format!(
                "the target's table {} does not have the columns this server knows",
                table.name
            )));
        }
    }
    Ok(())
}

/// One column of a batch, as the array PostgreSQL takes.
enum Array {
    Text(Vec<Option<String>>),
    Bytes(Vec<Option<Vec<u8>>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Small(Vec<Option<i16>>),
}

impl Array {
    fn new(kind: Kind, rows: usize) -> Self {
        match kind {
            Kind::Text => Array::Text(Vec::with_capacity(rows)),
            Kind::Utf8 | Kind::Bytes => Array::Bytes(Vec::with_capacity(rows)),
            Kind::Int => Array::Int(Vec::with_capacity(rows)),
            Kind::Bool => Array::Bool(Vec::with_capacity(rows)),
            Kind::Small => Array::Small(Vec::with_capacity(rows)),
        }
    }

    /// Adds `value`, or says what was wrong with it (never the value).
    fn push(&mut self, value: Val) -> std::result::Result<(), &'static str> {
        match (self, value) {
            (Array::Text(a), Val::Bytes(b)) => a.push(Some(
                String::from_utf8(b).map_err(|_| "text that is not UTF-8")?,
            )),
            (Array::Text(a), Val::Null) => a.push(None),
            (Array::Bytes(a), Val::Bytes(b)) => a.push(Some(b)),
            (Array::Bytes(a), Val::Null) => a.push(None),
            (Array::Int(a), Val::Int(i)) => a.push(Some(i)),
            (Array::Int(a), Val::Null) => a.push(None),
            (Array::Bool(a), Val::Int(i)) => a.push(Some(i != 0)),
            (Array::Bool(a), Val::Null) => a.push(None),
            (Array::Small(a), Val::Int(i)) => {
                a.push(Some(
                    i16::try_from(i).map_err(|_| "an integer out of range")?,
                ));
            }
            (Array::Small(a), Val::Null) => a.push(None),
            _ => return Err("a value of another type"),
        }
        Ok(())
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Array::Text(a) => a,
            Array::Bytes(a) => a,
            Array::Int(a) => a,
            Array::Bool(a) => a,
            Array::Small(a) => a,
        }
    }
}

/// `INSERT ... SELECT * FROM unnest($1::type[], ...)`: a batch in one
/// statement; identities take the copied numbers.
fn insert_sql(table: &Table) -> String {
    let arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| format!("${}::{}[]", i + 1, kind.pg_type()))
        .collect();
    let overriding = match table.counter {
        Some(Counter::Identity(_)) => " OVERRIDING SYSTEM VALUE",
        _ => "",
    };
    format!(
        "INSERT INTO {} ({}){overriding} SELECT * FROM unnest({})",
        table.name,
        table.column_list(),
        arrays.join(", ")
    )
}

/// Inserts a batch of `table`'s rows.
pub(super) async fn insert(tx: &Transaction<'_>, table: &Table, rows: Vec<Row>) -> Result<()> {
    let mut arrays: Vec<Array> = table
        .columns
        .iter()
        .map(|(_, kind)| Array::new(*kind, rows.len()))
        .collect();
    for row in rows {
        for ((array, value), (column, _)) in arrays.iter_mut().zip(row).zip(table.columns) {
            array.push(value).map_err(|what| {
                StoreError::Corrupt(format!("{}.{column} holds {what}", table.name))
            })?;
        }
    }
    let statement = tx.prepare_cached(&insert_sql(table)).await?;
    let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(Array::as_sql).collect();
    tx.execute(&statement, &params).await?;
    Ok(())
}

/// Moves every counter past the numbers copied, and past SQLite's
/// high-water mark (`floors`, by table) where it has one: the next number
/// handed out is one never used.
pub(super) async fn move_counters(tx: &Transaction<'_>, floors: &HashMap<&str, i64>) -> Result<()> {
    for table in TABLES {
        let (column, sequence) = match table.counter {
            None => continue,
            Some(Counter::Identity(column)) => (
                column,
                format!("pg_get_serial_sequence('{}', '{column}')", table.name),
            ),
            Some(Counter::Sequence { column, sequence }) => (column, format!("'{sequence}'")),
        };
        let floor = floors.get(table.name).copied().unwrap_or(0);
        let sql = format!(
            "SELECT setval({sequence}, greatest(v, 1), v > 0) FROM \
             (SELECT greatest(coalesce(max({column}), 0), $1::bigint) AS v FROM {}) m",
            table.name
        );
        tx.query_one(&sql, &[&floor]).await?;
    }
    Ok(())
}

/// A stored value as the copy sums it.
fn value(r: &tokio_postgres::Row, i: usize, kind: Kind) -> Result<Val> {
    let value = match kind {
        Kind::Text => r
            .try_get::<_, Option<String>>(i)?
            .map(|s| Val::Bytes(s.into_bytes())),
        Kind::Utf8 | Kind::Bytes => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Val::Bytes),
        Kind::Int => r.try_get::<_, Option<i64>>(i)?.map(Val::Int),
        Kind::Bool => r
            .try_get::<_, Option<bool>>(i)?
            .map(|b| Val::Int(i64::from(b))),
        Kind::Small => r
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Val::Int(i64::from(v))),
    };
    Ok(value.unwrap_or(Val::Null))
}

/// Every table's sum, each read back in key order (text keys in byte
/// order, as SQLite orders them) a few thousand rows at a time.
pub(super) async fn sums(tx: &Transaction<'_>) -> Result<Vec<TableSum>> {
    let mut sums = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let order: Vec<String> = table
            .key
            .iter()
            .map(|k| match table.kind_of(k) {
                Kind::Text => format!("{k} COLLATE \"C\""),
                _ => (*k).to_owned(),
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            table.column_list(),
            table.name,
            order.join(", ")
        );
        let portal = tx.bind(sql.as_str(), &[]).await?;
        let mut digest = Digest::new(table.name);
        loop {
            let rows = tx.query_portal(&portal, FETCH_ROWS).await?;
            for r in &rows {
                let row = table
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| value(r, i, *kind))
                    .collect::<Result<Row>>()?;
                digest.add(&row);
            }
            if rows.len() < FETCH_ROWS as usize {
                break;
            }
        }
        sums.push(digest.finish());
    }
    Ok(sums)
}
