//! Sign-in throttling: failures per user and address, attempts in flight, and
//! the hasher's queue.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, StatusCode};
use tower::ServiceExt as _;

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_failures_slow_down_that_user_from_that_address_only() {
    let app = App::new().await;
    let (name, pw) = app.add_user().await;
    let (other, other_pw) = app.add_user().await;
    let attacker = ip(1);
    let wrong = |n: &str| sign_in_request(n, "wrong");
    let right = sign_in_request;
    for _ in 0..10 {
        app.call_from(attacker, wrong(&name))
            .await
            .err(400, "invalid_grant");
    }
    let r = app.call_from(attacker, wrong(&name)).await;
    r.err(429, "slow_down");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&after), "{after}");
    // A correct password is refused too, meanwhile.
    let r = app.call_from(attacker, right(&name, &pw)).await;
    r.err(429, "slow_down");
    assert!(r.header("retry-after").is_some());
    // Nobody can lock the user out from another address...
    app.call_from(ip(2), right(&name, &pw)).await.ok();
    // ...and other users from that address are not affected.
    app.call_from(attacker, right(&other, &other_pw)).await.ok();
    app.call_from(attacker, wrong(&other))
        .await
        .err(400, "invalid_grant");
}

#[tokio::test]
async fn successes_do_not_count_as_failures() {
    let app = App::new().await;
    let (name, pw) = app.add_user().await;
    for _ in 0..12 {
        app.login_as(&name, &pw).await.ok();
    }
    for _ in 0..9 {
        app.login_as(&name, "wrong").await.err(400, "invalid_grant");
    }
    app.login_as(&name, &pw).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_failures_slow_down_the_address() {
    let app = App::new().await;
    let (name, pw) = app.add_user().await;
    let from = ip(3);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let router = app.router.clone();
        let ghost = unique("ghost");
        tasks.push(tokio::spawn(async move {
            let mut req = request(
                Method::POST,
                "/v1/auth/token",
                Some(FORM),
                Body::from(format!("grant_type=password&username={ghost}&password=x")),
                None,
            );
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(from, 1)));
            router.oneshot(req).await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::BAD_REQUEST);
    }
    let login = format!(
        "grant_type=password&username={}&password={}",
        enc(&name),
        enc(&pw)
    );
    let r = app
        .call_from(
            from,
            request(
                Method::POST,
                "/v1/auth/token",
                Some(FORM),
                Body::from(login.clone()),
                None,
            ),
        )
        .await;
    r.err(429, "slow_down");
    assert!(r.header("retry-after").is_some());
    app.call_from(
        ip(4),
        request(
            Method::POST,
            "/v1/auth/token",
            Some(FORM),
            Body::from(login),
            None,
        ),
    )
    .await
    .ok();
}

/// `n` sign-ins at once from one address; their statuses.
async fn concurrent_sign_ins(app: &App, n: usize, name: &str, pw: &str) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let router = app.router.clone();
            let mut req = sign_in_request(name, pw);
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(ip(20), 1)));
            tokio::spawn(async move { router.oneshot(req).await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

/// An attempt counts when it starts, but correct sign-ins that find the
/// limit reached only by attempts in flight wait for them: none is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_correct_sign_ins_of_one_user_all_succeed() {
    let app = App::new().await;
    let (name, pw) = app.add_user().await;
    let statuses = concurrent_sign_ins(&app, 30, &name, &pw).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
}

/// Parallel guesses still never pass the limit: 10 are checked, the rest
/// are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_wrong_sign_ins_never_pass_the_limit() {
    let app = App::new().await;
    let (name, pw) = app.add_user().await;
    let mut statuses = concurrent_sign_ins(&app, 30, &name, "wrong").await;
    statuses.sort_unstable();
    assert_eq!(statuses[..10], [400; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 20], "{statuses:?}");
    app.call_from(ip(20), sign_in_request(&name, &pw))
        .await
        .err(429, "slow_down");
}

/// Sign-ins past the hasher's queue are told to come back (503 with
/// `Retry-After`), not queued without limit; and that counts as no failure.
#[tokio::test]
async fn sign_ins_past_the_hasher_queue_are_503_temporarily_unavailable() {
    let app = App::with(&["--hash-queue", "2"]).await;
    let (name, pw) = app.add_user().await;
    let held = [
        app.state.hasher.enter().unwrap(),
        app.state.hasher.enter().unwrap(),
    ];
    assert!(app.state.hasher.enter().is_err());
    for password in [pw.as_str(), "wrong"].iter().cycle().take(24) {
        let r = app.login_as(&name, password).await;
        r.err(503, "temporarily_unavailable");
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&after), "{after}");
    }
    drop(held);
    // Twelve wrong passwords were never checked: no failures were counted.
    app.login_as(&name, &pw).await.ok();
    for _ in 0..9 {
        app.login_as(&name, "wrong").await.err(400, "invalid_grant");
    }
    app.login_as(&name, &pw).await.ok();
}
