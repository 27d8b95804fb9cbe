//! `POST /v1/auth/token` with the refresh grant: rotation, reuse detection,
//! the retry exception, and how refresh tokens are stored.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test]
async fn refresh_rotates_the_refresh_token_and_keeps_the_session() {
    let app = App::new().await;
    let u = app.user().await;
    let r = app.refresh(u.refresh()).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t1 = r.ok().clone();
    assert_token_response(&t1, &u.name);
    assert_ne!(t1["refresh_token"], u.token["refresh_token"]);
    assert_ne!(t1["access_token"], u.token["access_token"]);
    assert_eq!(t1["session_id"], u.token["session_id"]);
    assert_eq!(t1["user"], u.token["user"]);
    assert_ne!(
        jwt_part(t1["access_token"].as_str().unwrap(), 1)["jti"],
        jwt_part(u.access(), 1)["jti"]
    );
    let t2 = app
        .refresh(t1["refresh_token"].as_str().unwrap())
        .await
        .ok()
        .clone();
    assert_ne!(t2["refresh_token"], t1["refresh_token"]);
    // Every access token of the session still works.
    for t in [&u.token, &t1, &t2] {
        app.session(t["access_token"].as_str().unwrap()).await.ok();
    }
}

#[tokio::test]
async fn unknown_refresh_tokens_are_invalid_grants() {
    let app = App::new().await;
    let u = app.user().await;
    for bad in [
        "nope".to_string(),
        b64(&[7u8; 32]),
        u.access().to_string(),
        "x".repeat(10_000),
    ] {
        let r = app.refresh(&bad).await;
        r.err(400, "invalid_grant");
        assert_eq!(r.body["reason"], "invalid");
    }
    // None of that hurt the session.
    app.session(u.access()).await.ok();
    app.refresh(u.refresh()).await.ok();
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_the_whole_session() {
    let app = App::new().await;
    let u = app.user().await;
    let other = app.user().await;
    let t1 = app.refresh(u.refresh()).await.ok().clone();
    let t2 = app
        .refresh(t1["refresh_token"].as_str().unwrap())
        .await
        .ok()
        .clone();
    // R0 is spent and its successor R1 was used: reuse.
    let r = app.refresh(u.refresh()).await;
    assert_reason(&r.body, "invalid_grant", "reused");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Every access token of the session fails on the very next request.
    for t in [&u.token, &t1, &t2] {
        let at = t["access_token"].as_str().unwrap();
        app.session(at).await.unauthorized();
        app.pull(at, "").await.unauthorized();
        app.push(at, &ops(vec![])).await.unauthorized();
    }
    // So does the live refresh token of the session.
    let r = app.refresh(t2["refresh_token"].as_str().unwrap()).await;
    r.err(400, "invalid_grant");
    assert!(
        r.body["reason"] == "reused" || r.body["reason"] == "revoked",
        "{}",
        r.body
    );
    // Another session is untouched.
    app.session(other.access()).await.ok();
    app.refresh(other.refresh()).await.ok();
}

#[tokio::test]
async fn reusing_the_middle_of_a_chain_is_reuse_too() {
    let app = App::new().await;
    let u = app.user().await;
    let t1 = app.refresh(u.refresh()).await.ok().clone();
    let r1 = t1["refresh_token"].as_str().unwrap();
    let t2 = app.refresh(r1).await.ok().clone();
    let t3 = app
        .refresh(t2["refresh_token"].as_str().unwrap())
        .await
        .ok()
        .clone();
    assert_reason(&app.refresh(r1).await.body, "invalid_grant", "reused");
    app.session(t3["access_token"].as_str().unwrap())
        .await
        .unauthorized();
}

#[tokio::test]
async fn retrying_the_last_refresh_rotates_again_and_retires_the_unused_successor() {
    let app = App::new().await;
    let u = app.user().await;
    // R0 -> R1, but the answer "was lost": R1 is never used.
    let lost = app.refresh(u.refresh()).await.ok().clone();
    // R0 again, within 60 s: a retry, a fresh rotation.
    let retry = app.refresh(u.refresh()).await;
    let t2 = retry.ok().clone();
    assert_token_response(&t2, &u.name);
    assert_eq!(t2["session_id"], u.token["session_id"]);
    assert_ne!(t2["refresh_token"], lost["refresh_token"]);
    app.session(t2["access_token"].as_str().unwrap()).await.ok();
    let t3 = app
        .refresh(t2["refresh_token"].as_str().unwrap())
        .await
        .ok()
        .clone();
    app.session(t3["access_token"].as_str().unwrap()).await.ok();
}

/// PROTOCOL.md v1.1, "Tokens": R0 -> R1 (answer lost), R0 again -> R2;
/// then R1 turns up. Two parties hold the session: it ends.
#[tokio::test]
async fn a_retired_successor_presented_later_is_reuse() {
    let app = App::new().await;
    let u = app.user().await;
    let t1 = app.refresh(u.refresh()).await.ok().clone();
    let t2 = app.refresh(u.refresh()).await.ok().clone();
    let r = app.refresh(t1["refresh_token"].as_str().unwrap()).await;
    r.err(400, "invalid_grant");
    assert_reason(&r.body, "invalid_grant", "reused");
    // The whole session is revoked: R2 too, and every access token.
    let r = app.refresh(t2["refresh_token"].as_str().unwrap()).await;
    assert_reason(&r.body, "invalid_grant", "reused");
    for t in [&u.token, &t1, &t2] {
        let at = t["access_token"].as_str().unwrap();
        let r = app.session(at).await;
        r.unauthorized();
        assert_eq!(r.body["reason"], "reused");
        app.pull(at, "").await.unauthorized();
    }
}

/// A thief who copied R0 replays it within 60 s of the real client's
/// refresh, while the client still holds R1 unused: the thief gets R2, but
/// the client's next refresh (R1) ends the session for both.
#[tokio::test]
async fn a_thiefs_replay_inside_the_retry_window_ends_the_session_at_the_next_refresh() {
    let app = App::new().await;
    let u = app.user().await;
    let client = app.refresh(u.refresh()).await.ok().clone();
    let thief = app.refresh(u.refresh()).await.ok().clone();
    app.session(thief["access_token"].as_str().unwrap())
        .await
        .ok();
    let r = app.refresh(client["refresh_token"].as_str().unwrap()).await;
    assert_reason(&r.body, "invalid_grant", "reused");
    let r = app.refresh(thief["refresh_token"].as_str().unwrap()).await;
    r.err(400, "invalid_grant");
    app.session(thief["access_token"].as_str().unwrap())
        .await
        .unauthorized();
    app.session(client["access_token"].as_str().unwrap())
        .await
        .unauthorized();
}

/// The same refresh token sent several times at once (a client retrying
/// over a flaky link): all answer 200, and exactly one of the new refresh
/// tokens is live (the others are retired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_of_one_token_all_succeed_and_leave_one_live() {
    let app = App::new().await;
    let u = app.user().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let router = app.router.clone();
            let req = request(
                Method::POST,
                "/v1/auth/token",
                Some(FORM),
                Body::from(format!(
                    "grant_type=refresh_token&refresh_token={}",
                    enc(u.refresh())
                )),
                None,
            );
            tokio::spawn(async move {
                let res = router.oneshot(req).await.unwrap();
                let status = res.status();
                let bytes = res.into_body().collect().await.unwrap().to_bytes();
                (status, serde_json::from_slice::<Value>(&bytes).unwrap())
            })
        })
        .collect();
    let mut issued = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        issued.push(body["refresh_token"].as_str().unwrap().to_string());
    }
    let live: Vec<Vec<u8>> = sql_rows(
        &app,
        "SELECT hash FROM refresh_tokens WHERE session_id = ?1 \
         AND used_at IS NULL AND retired_at IS NULL",
        &[u.sid().into()],
    )
    .iter()
    .map(|r| r[0].bytes())
    .collect();
    assert_eq!(live.len(), 1);
    let live = issued
        .iter()
        .find(|t| sha256(t) == live[0])
        .expect("the live token is one of those answered");
    let next = app.refresh(live).await.ok().clone();
    app.session(next["access_token"].as_str().unwrap())
        .await
        .ok();
}

#[tokio::test]
async fn a_retry_after_the_successor_was_used_is_reuse() {
    let app = App::new().await;
    let u = app.user().await;
    let t1 = app.refresh(u.refresh()).await.ok().clone();
    // R1 is used: R0 is no longer "spent last with an unused successor".
    app.refresh(t1["refresh_token"].as_str().unwrap())
        .await
        .ok();
    assert_reason(
        &app.refresh(u.refresh()).await.body,
        "invalid_grant",
        "reused",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_end_with_the_session() {
    let app = App::with(&[
        "--refresh-ttl",
        "1s",
        "--access-ttl",
        "1s",
        "--leeway",
        "0s",
    ])
    .await;
    let u = app.user().await;
    assert!(u.token["refresh_expires_in"].as_u64().unwrap() <= 1);
    assert!(u.token["expires_in"].as_u64().unwrap() <= 1);
    // Keep rotating until the session's end: each answer's token is the
    // live one.
    let started = std::time::Instant::now();
    let mut rt = u.refresh().to_string();
    let body = loop {
        let r = app.refresh(&rt).await;
        if r.status != StatusCode::OK {
            break r.body;
        }
        rt = r.body["refresh_token"].as_str().unwrap().to_string();
        assert!(r.body["expires_in"].as_u64().unwrap() <= 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the session never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_reason(&body, "invalid_grant", "expired");
    let r = app.session(u.access()).await;
    r.unauthorized();
    assert_eq!(r.body["reason"], "expired");
}

#[tokio::test]
async fn the_retry_exception_lasts_60_seconds() {
    let app = App::new().await;
    let u = app.user().await;
    app.refresh(u.refresh()).await.ok();
    // R0 was spent 61 s ago and its successor is still unused: too late
    // for a retry, so it is reuse.
    sql(
        &app,
        "UPDATE refresh_tokens SET used_at = used_at - 61 WHERE hash = ?1",
        &[sha256(u.refresh()).into()],
    );
    let r = app.refresh(u.refresh()).await;
    assert_reason(&r.body, "invalid_grant", "reused");
    app.session(u.access()).await.unauthorized();
}

#[tokio::test]
async fn the_refresh_tokens_are_stored_only_as_hashes() {
    let app = App::new().await;
    let u = app.user().await;
    let hashes: Vec<Vec<u8>> = sql_rows(&app, "SELECT hash FROM refresh_tokens", &[])
        .iter()
        .map(|r| r[0].bytes())
        .collect();
    assert_eq!(hashes, vec![sha256(u.refresh())]);
    let stored = sql_rows(
        &app,
        "SELECT password_hash FROM users WHERE username = ?1",
        &[(&u.name).into()],
    )[0][0]
        .text()
        .to_owned();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
}
