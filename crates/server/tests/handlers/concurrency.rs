//! Concurrent pushes: revs stay unique, gap-free and per user, and no text is
//! lost.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::app::*;
use latchkey_testkit::*;

/// Revs of a user's whole history, pulled page by page.
async fn all_revs(app: &App, token: &str) -> Vec<(String, i64)> {
    let mut since = 0;
    let mut out = Vec::new();
    loop {
        let p = app.pull_ok(token, &format!("?since={since}&limit=7")).await;
        for c in p["changes"].as_array().unwrap() {
            out.push((
                c["note_id"].as_str().unwrap().to_string(),
                c["rev"].as_i64().unwrap(),
            ));
        }
        since = p["cursor"].as_i64().unwrap();
        if p["more"] == false {
            return out;
        }
    }
}

fn one_push(app: &App, token: &str, op: Value) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let router = app.router.clone();
    let req = request(
        Method::POST,
        "/v1/sync/push",
        Some(JSON),
        Body::from(ops(vec![op]).to_string()),
        Some(token),
    );
    tokio::spawn(async move {
        let res = router.oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_pushes_from_one_user_get_unique_gap_free_revs() {
    let app = App::new().await;
    let u = app.user().await;
    let notes: Vec<String> = (0..50).map(|_| uuid()).collect();
    let tasks: Vec<_> = notes
        .iter()
        .map(|n| one_push(&app, u.access(), upsert(&uuid(), n, 0, "c", "")))
        .collect();
    // Meanwhile, every pull sees a gap-free prefix of the revs.
    let mut prefix_checks = 0;
    while tasks.iter().any(|t| !t.is_finished()) && prefix_checks < 200 {
        let revs: Vec<i64> = all_revs(&app, u.access())
            .await
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(revs, (1..=revs.len() as i64).collect::<Vec<_>>());
        prefix_checks += 1;
    }
    let mut revs = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["status"], "applied");
        revs.push(body["results"][0]["rev"].as_i64().unwrap());
    }
    revs.sort_unstable();
    assert_eq!(revs, (1..=50).collect::<Vec<_>>());
    let pulled = all_revs(&app, u.access()).await;
    assert_eq!(pulled.len(), 50);
    let mut ids: Vec<String> = pulled.iter().map(|(n, _)| n.clone()).collect();
    ids.sort_unstable();
    let mut want = notes.clone();
    want.sort_unstable();
    assert_eq!(ids, want, "each note exactly once");
    assert_eq!(
        pulled.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_pushes_from_several_users_stay_per_user() {
    let app = App::new().await;
    let mut users = Vec::new();
    for _ in 0..5 {
        users.push(app.user().await);
    }
    let shared_note = uuid();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let u = &users[i % 5];
        // Everyone also races on the same note id, in their own space.
        let note = if i < 5 { shared_note.clone() } else { uuid() };
        tasks.push((
            i % 5,
            one_push(&app, u.access(), upsert(&uuid(), &note, 0, &u.name, "")),
        ));
    }
    let mut per_user: Vec<Vec<i64>> = vec![Vec::new(); 5];
    for (who, t) in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["status"], "applied");
        per_user[who].push(body["results"][0]["rev"].as_i64().unwrap());
    }
    for (u, mut revs) in users.iter().zip(per_user) {
        revs.sort_unstable();
        assert_eq!(revs, (1..=10).collect::<Vec<_>>());
        let pulled = app.pull_ok(u.access(), "").await;
        let changes = pulled["changes"].as_array().unwrap();
        assert_eq!(changes.len(), 10);
        assert!(changes.iter().all(|c| c["title"] == u.name.as_str()));
        assert!(changes.iter().any(|c| c["note_id"] == shared_note.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_of_one_note_never_lose_text() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "base", "")])
        .await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            one_push(
                &app,
                u.access(),
                upsert(&uuid(), &n, 1, "edit", &format!("text {i}")),
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        statuses.push(body["results"][0]["status"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses.iter().filter(|s| *s == "applied").count(), 1);
    assert_eq!(statuses.iter().filter(|s| *s == "conflict").count(), 9);
    let all = app.pull_ok(u.access(), "").await;
    let text = all.to_string();
    for i in 0..10 {
        assert!(text.contains(&format!("text {i}")), "text {i} was lost");
    }
}
