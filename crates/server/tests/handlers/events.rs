//! `GET /v1/sync/events`: `changed` for the user's own pushes only,
//! `revoked` and the end on every kind of revocation, the end at the
//! token's `exp` and at shutdown, the ping, and the 401s.

use std::time::{Duration, Instant};

use clap::Parser as _;
use latchkey_server::Cli;
use latchkey_server::cli::Command;
use serde_json::json;

use crate::app::*;
use latchkey_testkit::*;

/// Long enough for anything the server promises within a second.
const DEADLINE: Duration = Duration::from_secs(10);
/// What the protocol's "within one second" is checked against: the second,
/// and as much again for a test machine busy with other tests.
const PROMPT: Duration = Duration::from_secs(2);
/// How long a silent stream is listened to, to show that it says nothing.
const QUIET: Duration = Duration::from_millis(1500);

fn revoked(reason: &str) -> Said {
    Said::Event("revoked".into(), json!({ "reason": reason }))
}

#[tokio::test]
async fn a_push_by_another_session_is_told_and_another_users_is_not() {
    let app = App::new().await;
    let u = app.user().await;
    let before = app.push_new_note(u.access()).await;
    let laptop = app.login_as(&u.name, &u.password).await.ok().clone();
    let laptop = laptop["access_token"].as_str().unwrap();
    let v = app.user().await;

    let mut events = app.events(u.access()).await;
    // On connect: the latest rev, so a client can catch up at once.
    events.expect_changed(before).await;

    let started = Instant::now();
    let cursor = app.push_new_note(laptop).await;
    events.expect_changed(cursor).await;
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());

    // Another user's push, and a push of nothing new: not a word.
    app.push_new_note(v.access()).await;
    let batch = vec![upsert(&uuid(), &uuid(), 0, "once", "")];
    let first = app.push_ok(laptop, batch.clone()).await;
    events
        .expect_changed(first["cursor"].as_i64().unwrap())
        .await;
    app.push_ok(laptop, batch).await;
    assert_eq!(events.next_event(QUIET).await, Said::Nothing);

    // Still listening.
    let cursor = app.push_new_note(u.access()).await;
    events.expect_changed(cursor).await;
    assert!(!events.wire.contains("revoked"), "{}", events.wire);
}

#[tokio::test]
async fn a_revocation_by_the_cli_ends_the_stream_after_the_poll() {
    let app = App::new().await;
    let _upkeep = app.upkeep();
    let u = app.user().await;
    let second = app.login_as(&u.name, &u.password).await.ok().clone();
    let other = app.user().await;
    let mut mine = app.events(u.access()).await;
    let mut also_mine = app.events(second["access_token"].as_str().unwrap()).await;
    let mut theirs = app.events(other.access()).await;
    for e in [&mut mine, &mut also_mine, &mut theirs] {
        e.expect_changed(0).await;
    }

    let cli = app.other_process().await;
    let started = Instant::now();
    let n = cli
        .revoke_user(&u.name, latchkey_protocol::Reason::Revoked, now())
        .await
        .unwrap();
    assert_eq!(n, Some(2));
    for e in [&mut mine, &mut also_mine] {
        assert_eq!(e.next_event(DEADLINE).await, revoked("revoked"));
        assert_eq!(e.next(DEADLINE).await, Said::End);
    }
    // The poll runs every 250 ms.
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    assert_eq!(theirs.next_event(QUIET).await, Said::Nothing);
    // And the revoked token cannot open a stream again.
    app.get(EVENTS_PATH, Some(u.access())).await.unauthorized();
}

#[tokio::test]
async fn logout_ends_the_stream_at_once() {
    let app = App::new().await;
    let u = app.user().await;
    let second = app.login_as(&u.name, &u.password).await.ok().clone();

    // By the access token, as Bearer.
    let mut events = app.events(u.access()).await;
    events.expect_changed(0).await;
    let r = app
        .call(request(
            axum::http::Method::POST,
            "/v1/auth/revoke",
            None,
            axum::body::Body::empty(),
            Some(u.access()),
        ))
        .await;
    r.ok();
    assert_eq!(events.next_event(DEADLINE).await, revoked("revoked"));
    assert_eq!(events.next(DEADLINE).await, Said::End);

    // By the refresh token, in the form.
    let mut events = app.events(second["access_token"].as_str().unwrap()).await;
    events.expect_changed(0).await;
    app.logout(second["refresh_token"].as_str().unwrap()).await;
    assert_eq!(events.next_event(DEADLINE).await, revoked("revoked"));
    assert_eq!(events.next(DEADLINE).await, Said::End);
}

#[tokio::test]
async fn refresh_token_reuse_ends_the_stream_as_reused() {
    let app = App::new().await;
    let u = app.user().await;
    let mut events = app.events(u.access()).await;
    events.expect_changed(0).await;
    let t1 = app.refresh(u.refresh()).await.ok().clone();
    app.refresh(t1["refresh_token"].as_str().unwrap())
        .await
        .ok();
    // The first token again, after its successor was used: reuse.
    let r = app.refresh(u.refresh()).await;
    assert_reason(&r.body, "invalid_grant", "reused");
    assert_eq!(events.next_event(DEADLINE).await, revoked("reused"));
    assert_eq!(events.next(DEADLINE).await, Said::End);
}

#[tokio::test]
async fn the_stream_ends_without_a_word_at_the_tokens_exp() {
    let app = App::with(&["--access-ttl", "2s", "--leeway", "0s"]).await;
    let u = app.user().await;
    let exp = jwt_part(u.access(), 1)["exp"].as_i64().unwrap();
    let mut events = app.events(u.access()).await;
    events.expect_changed(0).await;
    assert_eq!(events.next_event(DEADLINE).await, Said::End);
    let ended = now();
    assert!(ended >= exp, "ended at {ended}, before exp {exp}");
    assert!(ended <= exp + 1, "ended at {ended}, exp {exp}");
    assert!(!events.wire.contains("revoked"), "{}", events.wire);
}

#[tokio::test]
async fn an_idle_stream_is_pinged() {
    let app = App::with(&["--events-ping", "1s"]).await;
    let u = app.user().await;
    let mut events = app.events(u.access()).await;
    events.expect_changed(0).await;
    let started = Instant::now();
    assert_eq!(events.next(DEADLINE).await, Said::Comment("ping".into()));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(events.next(DEADLINE).await, Said::Comment("ping".into()));
    assert_eq!(
        events.wire,
        "event: changed\ndata: {\"cursor\":0}\n\n: ping\n\n: ping\n\n"
    );
}

#[test]
fn the_ping_interval_is_at_most_15_s() {
    for (flag, ok) in [
        ("15s", true),
        ("1s", true),
        ("16s", false),
        ("500ms", false),
    ] {
        let cli = Cli::try_parse_from(["latchkey-server", "serve", "--events-ping", flag]).unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.validate().is_ok(), ok, "{flag}");
    }
    let cli = Cli::try_parse_from(["latchkey-server", "serve"]).unwrap();
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    assert_eq!(args.events_ping, Duration::from_secs(15));
}

#[tokio::test]
async fn without_a_good_token_there_is_no_stream() {
    let app = App::new().await;
    let r = app.get(EVENTS_PATH, None).await;
    r.err(401, "invalid_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="latchkey""#)
    );
    for bad in garbage_tokens() {
        app.get(EVENTS_PATH, Some(&bad)).await.unauthorized();
    }
    let u = app.user().await;
    app.logout(u.refresh()).await;
    let r = app.get(EVENTS_PATH, Some(u.access())).await;
    r.unauthorized();
    assert_eq!(r.body["reason"], "revoked");
}

#[tokio::test]
async fn closed_streams_leave_nothing_behind() {
    let app = App::new().await;
    let u = app.user().await;
    let v = app.user().await;
    let streams = vec![
        app.events(u.access()).await,
        app.events(u.access()).await,
        app.events(v.access()).await,
    ];
    assert_eq!(app.state.live.watched(), (2, 2));
    drop(streams);
    assert_eq!(app.state.live.watched(), (0, 0));
    // Pushes with nobody listening make no channel.
    app.push_new_note(u.access()).await;
    assert_eq!(app.state.live.watched(), (0, 0));
}

/// Two instances on one database: a push through one reaches a stream on
/// the other within the poll.
#[tokio::test]
async fn a_push_through_another_instance_is_told() {
    let app = App::new().await;
    let _upkeep = app.upkeep();
    let other = App::on_database(&app.db).await;
    let u = app.user().await;
    let mut events = app.events(u.access()).await;
    events.expect_changed(0).await;
    let started = Instant::now();
    let cursor = other.push_new_note(u.access()).await;
    events.expect_changed(cursor).await;
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
}

/// A server with open streams stops promptly: the streams end when the
/// shutdown starts, instead of holding the graceful shutdown forever.
#[tokio::test]
async fn open_streams_do_not_hold_up_shutdown() {
    let db = TestDb::new("s.db");
    let cli = Cli::try_parse_from([
        "latchkey-server",
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--db",
        db.arg(),
    ])
    .unwrap();
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let server = latchkey_server::Server::start(args).await.unwrap();
    let base = format!("http://{}", server.addr);
    let (name, pw) = (unique("user"), password());
    let hash = latchkey_server::auth::password::hash_password(pw.clone())
        .await
        .unwrap();
    server
        .state
        .store
        .create_user(&name, &hash, now())
        .await
        .unwrap();
    let http = web();
    let at = access_token(&http, &base, &name, &pw).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let res = http
            .get(format!("{base}{EVENTS_PATH}"))
            .bearer_auth(&at)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        let mut events = Events::new(Source::Http(res));
        events.expect_changed(0).await;
        streams.push(events);
    }

    let started = Instant::now();
    tokio::time::timeout(DEADLINE, server.stop())
        .await
        .expect("the server did not stop with streams open")
        .unwrap();
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    for mut events in streams {
        assert_eq!(events.next(DEADLINE).await, Said::End);
        assert!(!events.wire.contains("revoked"), "{}", events.wire);
    }
}
