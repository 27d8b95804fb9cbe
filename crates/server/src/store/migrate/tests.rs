use std::collections::BTreeSet;
use std::path::Path;

use latchkey_protocol::{Op, OpStatus, Reason};
use latchkey_testkit::PgCluster;
use uuid::Uuid;

use super::*;
use crate::store::{
    AttemptKey, AttemptLimits, AttemptOutcome, AttemptStart, PullOutcome, RefreshOutcome,
    SqliteStore, Store,
};

/// False, said, when PostgreSQL is not installed.
fn pg_available() -> bool {
    let available = PgCluster::available();
    if !available {
        println!("skipped: PostgreSQL is not installed");
    }
    available
}

fn upsert(note_id: Uuid, base_rev: i64, title: &str, body: &str) -> Op {
    Op::Upsert {
        op_id: Uuid::now_v7(),
        note_id,
        base_rev,
        title: title.into(),
        body: body.into(),
        client_time: 1,
        conflict_of: None,
    }
}

const LIMITS: AttemptLimits = AttemptLimits {
    window: 900,
    per_user: 10,
    per_address: 100,
};

fn attempt(n: u8) -> AttemptKey {
    AttemptKey {
        user: [n; 32],
        address: format!("192.0.2.{n}"),
    }
}

/// What the source holds, to ask the target about.
struct Made {
    ann: String,
    edited: Uuid,
    /// The first push, whose results the source keeps.
    first_push: Vec<Op>,
}

/// A SQLite store holding a row of every kind: two users, sessions with
/// and without a device, a refresh chain with a spent token, a revoked
/// session, a rotated key, notes edited, deleted and copied in a
/// conflict (text holding NUL and non-ASCII), their history and op
/// results, and sign-in attempts of which the newest was deleted.
async fn populate(store: &SqliteStore) -> Made {
    let ann = store.create_user("ann", "hash-ann", 1).await.unwrap();
    let bob = store.create_user("bøb", "hash-bob", 2).await.unwrap();
    store.rotate_key(crate::keys::generate(3), 3).await.unwrap();
    store.rotate_key(crate::keys::generate(4), 4).await.unwrap();
    store
        .create_session(
            &ann,
            "s-laptop",
            [1; 32],
            Some("Ann's laptop"),
            100,
            100_000,
        )
        .await
        .unwrap();
    store
        .create_session(&ann, "s-old", [2; 32], None, 100, 100_000)
        .await
        .unwrap();
    store
        .create_session(&bob, "s-phone", [3; 32], Some("Bøb\0phone"), 100, 100_000)
        .await
        .unwrap();
    for (presented, next, at) in [([1; 32], [11; 32], 110), ([11; 32], [12; 32], 120)] {
        let out = store.refresh(presented, next, at).await.unwrap();
        assert!(matches!(out, RefreshOutcome::Rotated(_)), "{out:?}");
    }
    store.touch_session("s-laptop", 400).await.unwrap();
    assert!(
        store
            .revoke_session("s-old", Reason::Revoked, 130)
            .await
            .unwrap()
    );

    let (edited, deleted) = (Uuid::now_v7(), Uuid::now_v7());
    let first_push = vec![
        upsert(edited, 0, "first", "ünïcode \0 body"),
        upsert(deleted, 0, "to go", "b"),
    ];
    store.push(&ann.id, first_push.clone(), 200).await.unwrap();
    let answer = store
        .push(
            &ann.id,
            vec![
                upsert(edited, 1, "second", "b2"),
                Op::Delete {
                    op_id: Uuid::now_v7(),
                    note_id: deleted,
                    base_rev: 2,
                },
                upsert(edited, 1, "elsewhere", "stale"),
            ],
            210,
        )
        .await
        .unwrap();
    assert_eq!(answer.results[2].status, OpStatus::Conflict);
    store
        .push(&bob.id, vec![upsert(Uuid::now_v7(), 0, "bob's", "")], 220)
        .await
        .unwrap();

    let mut ids = Vec::new();
    for n in 1..=3 {
        let AttemptStart::Started(id) =
            store.begin_attempt(&attempt(n), LIMITS, 300).await.unwrap()
        else {
            panic!("blocked")
        };
        ids.push(id);
    }
    store
        .end_attempt(ids[0], AttemptOutcome::Failed)
        .await
        .unwrap();
    store
        .end_attempt(ids[2], AttemptOutcome::Abandoned)
        .await
        .unwrap();
    Made {
        ann: ann.id,
        edited,
        first_push,
    }
}

fn page(outcome: PullOutcome) -> latchkey_protocol::PullResponse {
    match outcome {
        PullOutcome::Page(page) => page,
        PullOutcome::CursorAhead { latest } => panic!("cursor ahead of {latest}"),
    }
}

/// The copy answers every question as the source did, and the numbers
/// it hands out next (revs, rev changes, revocations, keys, attempts)
/// are new ones.
#[tokio::test]
async fn a_copy_answers_as_the_source_and_numbers_on_from_it() {
    if !pg_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let sqlite = SqliteStore::open(&path).unwrap();
    let made = populate(&sqlite).await;
    let url = PgCluster::shared().database();

    let report = migrate_store(&path, &url, false).await.unwrap();
    assert_eq!(report.migrated_from, None);
    let rows: Vec<(&str, u64)> = report.tables.iter().map(|t| (t.table, t.rows)).collect();
    assert_eq!(
        rows,
        [
            ("users", 2),
            ("sessions", 3),
            ("refresh_tokens", 5),
            ("revocations", 1),
            ("signing_keys", 2),
            ("notes", 4),
            ("note_versions", 2),
            ("ops", 6),
            ("login_attempts", 2),
        ]
    );

    let pg = PgStore::open(&url).await.unwrap();
    let (s, p): (&dyn Store, &dyn Store) = (&sqlite, &pg);
    assert_eq!(s.list_users().await.unwrap(), p.list_users().await.unwrap());
    let kids = |keys: Vec<crate::store::KeyRecord>| -> Vec<_> {
        keys.into_iter()
            .map(|k| (k.kid, k.secret, k.created_at, k.retired_at))
            .collect()
    };
    assert_eq!(kids(s.keys().await.unwrap()), kids(p.keys().await.unwrap()));
    assert_eq!(
        s.keys_version().await.unwrap(),
        p.keys_version().await.unwrap()
    );
    assert_eq!(
        page(s.pull(&made.ann, 0, 100).await.unwrap()),
        page(p.pull(&made.ann, 0, 100).await.unwrap())
    );
    let history = p.history(&made.ann, made.edited).await.unwrap().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        s.history(&made.ann, made.edited).await.unwrap().unwrap(),
        history
    );
    assert_eq!(
        s.live_sessions(&made.ann, 500).await.unwrap(),
        p.live_sessions(&made.ann, 500).await.unwrap()
    );
    assert_eq!(
        s.revocations_since(0).await.unwrap(),
        p.revocations_since(0).await.unwrap()
    );
    assert_eq!(
        s.rev_changes_since(0, 10).await.unwrap(),
        p.rev_changes_since(0, 10).await.unwrap()
    );
    for sid in ["s-laptop", "s-old", "s-phone"] {
        assert_eq!(s.session(sid).await.unwrap(), p.session(sid).await.unwrap());
    }
    // A retried push is answered as the first time, changing nothing.
    let before = p.latest_rev(&made.ann).await.unwrap();
    assert_eq!(before, 5);
    let again = p.push(&made.ann, made.first_push, 500).await.unwrap();
    assert_eq!(again.cursor, before);
    let statuses: Vec<_> = again.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [OpStatus::Duplicate, OpStatus::Duplicate]);

    // The live refresh token goes on; the spent one is reuse.
    assert!(matches!(
        p.refresh([12; 32], [13; 32], 500).await.unwrap(),
        RefreshOutcome::Rotated(_)
    ));
    assert_eq!(
        p.refresh([1; 32], [14; 32], 510).await.unwrap(),
        RefreshOutcome::Refused(Reason::Reused)
    );
    // New numbers, never the copied ones.
    let last_revocation = s.last_revocation().await.unwrap();
    assert_eq!(
        p.revocations_since(last_revocation).await.unwrap()[0].seq,
        last_revocation + 1
    );
    let last_change = p.last_rev_change().await.unwrap();
    let pushed = p
        .push(&made.ann, vec![upsert(Uuid::now_v7(), 0, "new", "")], 520)
        .await
        .unwrap();
    assert_eq!(pushed.cursor, before + 1);
    assert_eq!(p.last_rev_change().await.unwrap(), last_change + 1);
    let keys_version = p.keys_version().await.unwrap();
    p.rotate_key(crate::keys::generate(530), 530).await.unwrap();
    assert_eq!(p.keys_version().await.unwrap(), keys_version + 1);
    // SQLite handed out attempt 3 (deleted since): the next is 4.
    assert_eq!(
        p.begin_attempt(&attempt(9), LIMITS, 540).await.unwrap(),
        AttemptStart::Started(4)
    );
}

/// The check is not one that cannot fail: a target differing from the
/// source in one value, or one row, of any table is caught, by table.
#[tokio::test]
async fn the_check_catches_a_target_that_differs_from_the_source() {
    if !pg_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    populate(&SqliteStore::open(&path).unwrap()).await;
    let url = PgCluster::shared().database();
    migrate_store(&path, &url, false).await.unwrap();

    let source = source::sums(&path).unwrap();
    let pg = PgStore::open(&url).await.unwrap();
    let mut client = pg.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    compare(&source, &target::sums(&tx).await.unwrap()).unwrap();
    drop(tx);

    let one =
        |table: &str, key: &str| format!("(SELECT {key} FROM {table} ORDER BY {key} LIMIT 1)");
    for (table, change) in [
        (
            "notes",
            format!(
                "UPDATE notes SET body = body || '\\x00'::bytea WHERE note_id = {}",
                one("notes", "note_id")
            ),
        ),
        (
            "note_versions",
            format!(
                "DELETE FROM note_versions WHERE note_id = {}",
                one("note_versions", "note_id")
            ),
        ),
        (
            "refresh_tokens",
            "UPDATE refresh_tokens SET used_at = NULL WHERE used_at = 110".to_owned(),
        ),
        (
            "ops",
            format!(
                "UPDATE ops SET conflict = NOT conflict WHERE op_id = {}",
                one("ops", "op_id")
            ),
        ),
        (
            "sessions",
            "UPDATE sessions SET device_name = 'Ann''s laptop ' WHERE id = 's-laptop'".to_owned(),
        ),
        (
            "login_attempts",
            "UPDATE login_attempts SET state = 2 WHERE state = 1".to_owned(),
        ),
        (
            "users",
            "INSERT INTO users (id, username, password_hash, created_at) \
             VALUES ('intruder', 'eve', 'x', 1)"
                .to_owned(),
        ),
    ] {
        let tx = client.transaction().await.unwrap();
        let changed = tx.execute(change.as_str(), &[]).await.unwrap();
        assert_eq!(changed, 1, "{change}");
        let found = compare(&source, &target::sums(&tx).await.unwrap());
        match found {
            Err(StoreError::CopyMismatch { table: t, .. }) => assert_eq!(t, table, "{change}"),
            other => panic!("{change}: {other:?}"),
        }
        // Rolled back: the next change is the only one.
        drop(tx);
    }
}

/// A target holding data is refused, saying what it holds and never the
/// password, and left as it was; with `replace` it is replaced whole. A
/// source of an older schema is migrated first.
#[tokio::test]
async fn a_target_with_data_is_refused_unless_replaced() {
    if !pg_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let sqlite = SqliteStore::open(&path).unwrap();
    let made = populate(&sqlite).await;
    drop(sqlite);
    let url = PgCluster::shared().database();
    let pg = PgStore::open(&url).await.unwrap();
    pg.create_user("zed", "hash", 1).await.unwrap();

    let refused = migrate_store(&path, &url, false).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::TargetNotEmpty { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("users: 1"), "{refused}");
    assert!(refused.to_string().contains("--replace"), "{refused}");
    assert_eq!(pg.list_users().await.unwrap().len(), 1);

    // Back to version 4 (before devices): migrated first, then copied.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "ALTER TABLE sessions DROP COLUMN device_name; \
         ALTER TABLE sessions DROP COLUMN last_seen_at; DROP TABLE login_attempts; \
         PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(c);
    let report = migrate_store(&path, &url, true).await.unwrap();
    assert_eq!(report.migrated_from, Some(4));
    let names: Vec<String> = pg
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["ann", "bøb"]);
    assert_eq!(pg.latest_rev(&made.ann).await.unwrap(), 5);
    assert_eq!(
        pg.live_sessions(&made.ann, 500).await.unwrap()[0].device_name,
        None
    );
}

/// The tables, sequences and columns of both schemas are exactly those
/// [`TABLES`] maps: a migration that adds one without teaching the copy
/// fails here.
#[tokio::test]
async fn every_table_column_and_counter_of_both_schemas_is_mapped() {
    let mapped: BTreeSet<&str> = TABLES.iter().map(|t| t.name).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(SqliteStore::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    let tables: BTreeSet<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        tables.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        mapped
    );
    source::check_columns(&c).unwrap();
    let autoincrement: BTreeSet<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE sql LIKE '%AUTOINCREMENT%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let identities: BTreeSet<String> = TABLES
        .iter()
        .filter(|t| matches!(t.counter, Some(Counter::Identity(_))))
        .map(|t| t.name.to_owned())
        .collect();
    assert_eq!(autoincrement, identities);

    if !pg_available() {
        return;
    }
    let pg = PgStore::open(&PgCluster::shared().database())
        .await
        .unwrap();
    let mut client = pg.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    target::check_columns(&tx).await.unwrap();
    let names = |rows: Vec<tokio_postgres::Row>| -> BTreeSet<String> {
        rows.iter().map(|r| r.get(0)).collect()
    };
    let tables = names(
        tx.query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name <> 'schema_version'",
            &[],
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        tables.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        mapped
    );
    let sequences = names(
        tx.query(
            "SELECT c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'S' AND n.nspname = current_schema()",
            &[],
        )
        .await
        .unwrap(),
    );
    let mut counted = BTreeSet::new();
    for table in TABLES {
        let sequence: String = match table.counter {
            None => continue,
            Some(Counter::Identity(column)) => tx
                .query_one(
                    "SELECT split_part(pg_get_serial_sequence($1, $2), '.', 2)",
                    &[&table.name, &column],
                )
                .await
                .unwrap()
                .get(0),
            Some(Counter::Sequence { sequence, .. }) => sequence.to_owned(),
        };
        counted.insert(sequence);
    }
    assert_eq!(sequences, counted);
}

/// The source path as the error shows it: never made when missing.
#[tokio::test]
async fn a_missing_source_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    let e = migrate_store(&path, "postgres://u:secret@127.0.0.1:1/db", false)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
    assert!(!Path::new(&path).exists());
}
