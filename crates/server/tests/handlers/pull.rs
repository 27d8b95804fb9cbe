//! `GET /v1/sync/pull`: paging, limits, the query, and a cursor ahead of the
//! latest change.

use serde_json::{Value, json};

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test]
async fn pull_pages_with_limit_and_more() {
    let app = App::new().await;
    let u = app.user().await;
    let batch: Vec<Value> = (0..7)
        .map(|i| upsert(&uuid(), &uuid(), 0, &format!("n{i}"), ""))
        .collect();
    app.push_ok(u.access(), batch).await;
    let mut since = 0;
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    loop {
        let p = app
            .pull_ok(u.access(), &format!("?since={since}&limit=3"))
            .await;
        let changes = p["changes"].as_array().unwrap();
        pages.push((changes.len(), p["more"].as_bool().unwrap()));
        seen.extend(changes.iter().map(|c| c["rev"].as_i64().unwrap()));
        since = p["cursor"].as_i64().unwrap();
        if !p["more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(pages, vec![(3, true), (3, true), (1, false)]);
    assert_eq!(seen, (1..=7).collect::<Vec<_>>());
    assert_eq!(since, 7);
    // A page that ends exactly at the last change says there is no more.
    let p = app.pull_ok(u.access(), "?since=1&limit=6").await;
    assert_eq!(p["changes"].as_array().unwrap().len(), 6);
    assert_eq!(p["more"], false);
    assert_eq!(p["cursor"], 7);
    let p = app.pull_ok(u.access(), "?limit=1").await;
    assert_eq!(p["cursor"], 1);
    assert_eq!(p["more"], true);
    // Unknown parameters are ignored.
    app.pull_ok(u.access(), "?since=0&limit=2&foo=bar").await;
}

#[tokio::test]
async fn pull_limit_defaults_to_500_and_is_clamped_to_1000() {
    let app = App::new().await;
    let u = app.user().await;
    for _ in 0..2 {
        let batch: Vec<Value> = (0..1000)
            .map(|_| upsert(&uuid(), &uuid(), 0, "t", ""))
            .collect();
        let res = app.push_ok(u.access(), batch).await;
        assert_eq!(res["results"].as_array().unwrap().len(), 1000);
    }
    let p = app.pull_ok(u.access(), "").await;
    assert_eq!(p["changes"].as_array().unwrap().len(), 500);
    assert_eq!(p["more"], true);
    assert_eq!(p["cursor"], 500);
    for limit in ["1001", "5000", "18446744073709551615"] {
        let p = app.pull_ok(u.access(), &format!("?limit={limit}")).await;
        assert_eq!(p["changes"].as_array().unwrap().len(), 1000, "{limit}");
        assert_eq!(p["more"], true);
        assert_eq!(p["cursor"], 1000);
    }
    let p = app.pull_ok(u.access(), "?since=1000&limit=1000").await;
    assert_eq!(p["changes"].as_array().unwrap().len(), 1000);
    assert_eq!(p["more"], false);
    assert_eq!(p["cursor"], 2000);
}

#[tokio::test]
async fn pull_pages_stop_at_about_4_mib() {
    let app = App::new().await;
    let u = app.user().await;
    let big = "b".repeat(1024 * 1024);
    let batch: Vec<Value> = (0..6)
        .map(|_| upsert(&uuid(), &uuid(), 0, "big", &big))
        .collect();
    app.push_ok(u.access(), batch).await;
    let p = app.pull_ok(u.access(), "?limit=1000").await;
    let n = p["changes"].as_array().unwrap().len();
    assert!((1..6).contains(&n), "{n} changes in one page");
    assert_eq!(p["more"], true);
    assert_eq!(p["cursor"], n as i64);
    let rest = app
        .pull_ok(u.access(), &format!("?since={n}&limit=1000"))
        .await;
    assert_eq!(
        rest["changes"].as_array().unwrap().len() + n,
        6,
        "second page"
    );
}

#[tokio::test]
async fn pull_refuses_a_bad_query() {
    let app = App::new().await;
    let u = app.user().await;
    for q in [
        "?since=-1",
        "?since=abc",
        "?since=1.5",
        "?since=",
        "?limit=0",
        "?limit=-5",
        "?limit=abc",
        "?limit=",
        "?since=99999999999999999999999",
    ] {
        app.pull(u.access(), q).await.err(400, "invalid_request");
    }
}

/// PROTOCOL.md v1.1: a cursor past the user's latest rev (a server
/// restored from an older backup) is 409 `cursor_ahead`; the latest rev
/// itself is an ordinary empty page.
#[tokio::test]
async fn pull_from_a_cursor_past_the_latest_rev_is_409_cursor_ahead() {
    let app = App::new().await;
    let u = app.user().await;
    // A user with nothing yet: 0 is the latest rev.
    let p = app.pull_ok(u.access(), "?since=0").await;
    assert_eq!(p, json!({"changes": [], "cursor": 0, "more": false}));
    app.pull(u.access(), "?since=1")
        .await
        .err(409, "cursor_ahead");
    app.push_ok(
        u.access(),
        vec![
            upsert(&uuid(), &uuid(), 0, "a", "1"),
            upsert(&uuid(), &uuid(), 0, "b", "2"),
        ],
    )
    .await;
    let p = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(p, json!({"changes": [], "cursor": 2, "more": false}));
    for since in ["3", "1000000000", "9223372036854775807"] {
        let r = app
            .pull(u.access(), &format!("?since={since}&limit=5"))
            .await;
        r.err(409, "cursor_ahead");
        assert!(r.body.get("reason").is_none(), "{}", r.body);
    }
    // Another user's revs do not count: the cursor is per user.
    let other = app.user().await;
    app.pull(other.access(), "?since=2")
        .await
        .err(409, "cursor_ahead");
    // From 0 the client gets everything again.
    let p = app.pull_ok(u.access(), "?since=0").await;
    assert_eq!(p["changes"].as_array().unwrap().len(), 2);
}
