//! What every store must do alike, checked on each: SQLite always, and
//! PostgreSQL (a private cluster of the test kit) when it is installed.

use std::sync::Arc;

use latchkey_protocol::sync::PULL_PAGE_BYTES;
use latchkey_protocol::{Op, Reason};
use latchkey_testkit::PgCluster;
use uuid::Uuid;

use super::*;

/// A store on a fresh database, and what keeps that database alive.
struct Fresh {
    name: &'static str,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

/// A fresh store of every kind there is here.
async fn stores() -> Vec<Fresh> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(&Location::Sqlite(dir.path().join("s.db")))
        .await
        .unwrap();
    let mut all = vec![Fresh {
        name: "sqlite",
        store: sqlite,
        _dir: dir,
    }];
    if PgCluster::available() {
        let url = PgCluster::shared().database();
        all.push(Fresh {
            name: "postgres",
            store: open(&Location::Postgres(url)).await.unwrap(),
            _dir: tempfile::tempdir().unwrap(),
        });
    } else {
        println!("PostgreSQL is not installed: checked on SQLite only");
    }
    all
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

/// Pushes are numbered in commit order across users, and a push that
/// moves no rev (a duplicate) is not a change.
#[tokio::test]
async fn rev_changes_come_in_commit_order_with_the_latest_rev() {
    for Fresh { name, store, .. } in stores().await {
        let ann = store.create_user("ann", "hash", 1).await.unwrap();
        let bob = store.create_user("bob", "hash", 1).await.unwrap();
        let batch = vec![upsert(Uuid::now_v7(), 0, "a", "")];
        store.push(&ann.id, batch.clone(), 2).await.unwrap();
        store
            .push(&bob.id, vec![upsert(Uuid::now_v7(), 0, "b", "")], 2)
            .await
            .unwrap();
        store
            .push(&ann.id, vec![upsert(Uuid::now_v7(), 0, "c", "")], 2)
            .await
            .unwrap();
        store.push(&ann.id, batch, 3).await.unwrap();
        let seen: Vec<(i64, &str, i64)> = store
            .rev_changes_since(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|c| {
                let who = if c.user_id == ann.id { "ann" } else { "bob" };
                (c.seq, who, c.rev)
            })
            .collect();
        // Each user once, at their latest change.
        assert_eq!(seen, [(2, "bob", 1), (3, "ann", 2)], "{name}");
        assert_eq!(store.last_rev_change().await.unwrap(), 3, "{name}");
        assert!(store.rev_changes_since(3, 10).await.unwrap().is_empty());
        assert_eq!(store.rev_changes_since(0, 1).await.unwrap().len(), 1);
        assert_eq!(store.latest_rev(&ann.id).await.unwrap(), 2, "{name}");
        assert_eq!(store.latest_rev("nobody").await.unwrap(), 0, "{name}");
    }
}

/// A history answer stops before the version that would take it past
/// 8 MiB; the newest always goes.
#[tokio::test]
async fn a_history_answer_stays_within_8_mib() {
    for Fresh { name, store, .. } in stores().await {
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        let note = Uuid::now_v7();
        let big = "x".repeat(3 * 1024 * 1024);
        for base in 0..4 {
            let op = upsert(note, base, &format!("v{base}"), &big);
            store.push(&user.id, vec![op], 2).await.unwrap();
        }
        let history = store.history(&user.id, note).await.unwrap().unwrap();
        let revs: Vec<i64> = history.iter().map(|v| v.rev).collect();
        // Three earlier versions of 3 MiB each: the two newest fit.
        assert_eq!(revs, [3, 2], "{name}");
        let bytes: usize = history.iter().map(|v| v.body.len()).sum();
        assert!(bytes <= HISTORY_ANSWER_BYTES);
        // A note with no earlier version, and one that is not the user's.
        let fresh = Uuid::now_v7();
        store
            .push(&user.id, vec![upsert(fresh, 0, "t", "b")], 2)
            .await
            .unwrap();
        assert_eq!(store.history(&user.id, fresh).await.unwrap(), Some(vec![]));
        assert_eq!(store.history("nobody", fresh).await.unwrap(), None);
    }
}

/// A page ends at the limit, or after the change that takes it to
/// `PULL_PAGE_BYTES` (the first change always goes, however big).
#[tokio::test]
async fn a_pull_page_ends_at_its_limit_or_its_bytes() {
    let big = "x".repeat(PULL_PAGE_BYTES / 2 + 1);
    for Fresh { name, store, .. } in stores().await {
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        let ops = (0..3)
            .map(|_| upsert(Uuid::now_v7(), 0, "t", &big))
            .chain((0..3).map(|_| upsert(Uuid::now_v7(), 0, "small", "")))
            .collect();
        store.push(&user.id, ops, 2).await.unwrap();
        let page = |since, limit| {
            let store = store.clone();
            let user_id = user.id.clone();
            async move {
                match store.pull(&user_id, since, limit).await.unwrap() {
                    PullOutcome::Page(p) => p,
                    PullOutcome::CursorAhead { latest } => panic!("ahead of {latest}"),
                }
            }
        };
        // Two big ones pass half the page's bytes: the third waits.
        let p = page(0, 100).await;
        let revs: Vec<i64> = p.changes.iter().map(|c| c.rev).collect();
        assert_eq!((revs, p.cursor, p.more), (vec![1, 2], 2, true), "{name}");
        assert_eq!(p.changes[1].body.len(), big.len());
        let p = page(2, 2).await;
        let revs: Vec<i64> = p.changes.iter().map(|c| c.rev).collect();
        assert_eq!((revs, p.more), (vec![3, 4], true), "{name}");
        let p = page(4, 100).await;
        let revs: Vec<i64> = p.changes.iter().map(|c| c.rev).collect();
        assert_eq!((revs, p.cursor, p.more), (vec![5, 6], 6, false), "{name}");
        assert!(page(6, 100).await.changes.is_empty());
        assert_eq!(
            store.pull(&user.id, 7, 100).await.unwrap(),
            PullOutcome::CursorAhead { latest: 6 },
            "{name}"
        );
    }
}

/// Text a client sends may hold NUL (SQLite keeps it; PostgreSQL's TEXT
/// would refuse it): it round-trips, and a name or id holding one names
/// nothing rather than failing.
#[tokio::test]
async fn text_holding_nul_round_trips_and_names_nothing() {
    for Fresh { name, store, .. } in stores().await {
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        let note = Uuid::now_v7();
        store
            .push(&user.id, vec![upsert(note, 0, "a\0title", "a\0body")], 2)
            .await
            .unwrap();
        let PullOutcome::Page(p) = store.pull(&user.id, 0, 10).await.unwrap() else {
            panic!("{name}: ahead")
        };
        assert_eq!(p.changes[0].title, "a\0title", "{name}");
        assert_eq!(p.changes[0].body, "a\0body", "{name}");
        store
            .create_session(&user, "sid", [1; 32], Some("dev\0ice"), 10, 1_000)
            .await
            .unwrap();
        let listed = store.live_sessions(&user.id, 20).await.unwrap();
        assert_eq!(listed[0].device_name.as_deref(), Some("dev\0ice"), "{name}");
        assert_eq!(store.find_user("an\0n").await.unwrap(), None, "{name}");
        assert_eq!(store.session("s\0id").await.unwrap(), None, "{name}");
        let revoked = store.revoke_own_session(&user.id, "s\0id", 20).await;
        assert!(!revoked.unwrap(), "{name}");
        let revoked = store.revoke_session("s\0id", Reason::Revoked, 20).await;
        assert!(!revoked.unwrap(), "{name}");
    }
}

/// Users are listed by name, byte by byte (not in a locale's order).
#[tokio::test]
async fn users_are_listed_in_byte_order() {
    for Fresh { name, store, .. } in stores().await {
        for user in ["b", "B", "a", "_x", "é"] {
            store.create_user(user, "hash", 1).await.unwrap();
        }
        let names: Vec<String> = store
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, ["B", "_x", "a", "b", "é"], "{name}");
        let taken = store.create_user("a", "hash", 1).await;
        assert!(matches!(taken, Err(StoreError::UserExists(_))), "{name}");
    }
}
