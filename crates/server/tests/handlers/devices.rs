//! Devices and sessions (PROTOCOL.md v1.1): the device name of a sign-in,
//! the session list, ending one session or all the others, and the
//! password change.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::app::*;
use latchkey_testkit::*;

impl App {
    async fn sign_in_from(&self, name: &str, pw: &str, device: &str) -> Resp {
        self.form(
            "/v1/auth/token",
            &format!(
                "grant_type=password&username={}&password={}&device_name={}",
                enc(name),
                enc(pw),
                enc(device)
            ),
            None,
        )
        .await
    }

    async fn sessions(&self, token: &str) -> Value {
        self.get("/v1/auth/sessions", Some(token))
            .await
            .ok()
            .clone()
    }

    /// `DELETE /v1/auth/sessions/{id}`: its status, and its body if any
    /// (a 204 has none, so it skips [`App::call`]'s JSON checks).
    async fn end_session(&self, token: &str, id: &str) -> (StatusCode, Option<Resp>) {
        let req = request(
            Method::DELETE,
            &format!("/v1/auth/sessions/{id}"),
            None,
            Body::empty(),
            Some(token),
        );
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let raw = body.collect().await.unwrap().to_bytes();
        if parts.status == StatusCode::NO_CONTENT {
            assert!(raw.is_empty());
            return (parts.status, None);
        }
        let r = Resp::new("DELETE session", parts.status, parts.headers, raw.to_vec());
        (parts.status, Some(r))
    }

    async fn change_password_from(
        &self,
        addr: std::net::IpAddr,
        token: &str,
        current: &str,
        new: &str,
    ) -> Resp {
        let body = json!({"current_password": current, "new_password": new});
        self.call_from(
            addr,
            request(
                Method::POST,
                "/v1/account/password",
                Some(JSON),
                Body::from(body.to_string()),
                Some(token),
            ),
        )
        .await
    }
}

/// A second sign-in of `user`, from the device `device`.
async fn another_device(app: &App, user: &User, device: &str) -> Value {
    app.sign_in_from(&user.name, &user.password, device)
        .await
        .ok()
        .clone()
}

/// A user signed in on three devices (the two others' token answers), and
/// another user.
async fn three_devices_and_a_stranger(app: &App) -> (User, [Value; 2], User) {
    let user = app.user().await;
    let others = [
        another_device(app, &user, "a").await,
        another_device(app, &user, "b").await,
    ];
    (user, others, app.user().await)
}

fn ids(list: &Value) -> Vec<&str> {
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_device_name_is_at_most_64_characters() {
    let app = App::new().await;
    let (name, pw) = app.add_user().await;
    app.sign_in_from(&name, &pw, &"x".repeat(65))
        .await
        .err(400, "invalid_request");
    // Characters, not bytes: 64 of them in 128 bytes is allowed.
    let t = app
        .sign_in_from(&name, &pw, &"é".repeat(64))
        .await
        .ok()
        .clone();
    let list = app.sessions(t["access_token"].as_str().unwrap()).await;
    assert_eq!(list["sessions"][0]["device_name"], "é".repeat(64));
}

#[tokio::test]
async fn the_list_shows_live_sessions_most_recently_seen_first() {
    let app = App::new().await;
    let user = app.user().await;
    let laptop = another_device(&app, &user, "laptop").await;
    let phone = another_device(&app, &user, "phone").await;
    let ended = another_device(&app, &user, "old").await;
    app.logout(ended["refresh_token"].as_str().unwrap()).await;
    let stranger = app.user().await;
    // The first sign-in was seen long ago; the laptop a while ago.
    let now = now();
    sql(
        &app,
        "UPDATE sessions SET last_seen_at = ?2 WHERE id = ?1",
        &[user.sid().into(), (now - 7200).into()],
    );
    let laptop_sid = laptop["session_id"].as_str().unwrap();
    sql(
        &app,
        "UPDATE sessions SET last_seen_at = ?2 WHERE id = ?1",
        &[laptop_sid.into(), (now - 600).into()],
    );
    let list = app.sessions(laptop["access_token"].as_str().unwrap()).await;
    let phone_sid = phone["session_id"].as_str().unwrap();
    assert_eq!(ids(&list), [phone_sid, laptop_sid, user.sid()]);
    let first = &list["sessions"][0];
    assert_keys(
        first,
        &[
            "session_id",
            "device_name",
            "created_at",
            "last_seen_at",
            "current",
        ],
    );
    assert_eq!(first["device_name"], "phone");
    assert!(first["created_at"].as_i64().unwrap() >= now - 5);
    let current: Vec<bool> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["current"].as_bool().unwrap())
        .collect();
    assert_eq!(current, [false, true, false]);
    // No device name given: null.
    assert_eq!(list["sessions"][2]["device_name"], Value::Null);
    assert!(!ids(&app.sessions(stranger.access()).await).contains(&phone_sid));
    // An expired session is not live.
    sql(
        &app,
        "UPDATE sessions SET expires_at = ?2 WHERE id = ?1",
        &[phone_sid.into(), (now - 1).into()],
    );
    let list = app.sessions(laptop["access_token"].as_str().unwrap()).await;
    assert_eq!(ids(&list), [laptop_sid, user.sid()]);
    app.get("/v1/auth/sessions", None)
        .await
        .err(401, "invalid_token");
}

fn last_seen(app: &App, sid: &str) -> i64 {
    sql_rows(
        app,
        "SELECT last_seen_at FROM sessions WHERE id = ?1",
        &[sid.into()],
    )[0][0]
        .int()
}

#[tokio::test]
async fn last_seen_moves_on_refresh_and_session_check_at_most_once_a_minute() {
    let app = App::new().await;
    let user = app.user().await;
    let now = now();
    let set = |at: i64| {
        sql(
            &app,
            "UPDATE sessions SET last_seen_at = ?2 WHERE id = ?1",
            &[user.sid().into(), at.into()],
        )
    };
    set(now - 3600);
    let t = app.refresh(user.refresh()).await.ok().clone();
    assert!(last_seen(&app, user.sid()) >= now);
    // Within the minute: unchanged.
    set(now - 30);
    app.refresh(t["refresh_token"].as_str().unwrap()).await.ok();
    app.session(user.access()).await.ok();
    assert_eq!(last_seen(&app, user.sid()), now - 30);
    set(now - 3600);
    app.session(user.access()).await.ok();
    assert!(last_seen(&app, user.sid()) >= now);
}

#[tokio::test]
async fn ending_a_session_revokes_it_at_once() {
    let app = App::new().await;
    let user = app.user().await;
    let phone = another_device(&app, &user, "phone").await;
    let phone_access = phone["access_token"].as_str().unwrap();
    let mut events = app.events(phone_access).await;
    let (status, _) = app
        .end_session(user.access(), phone["session_id"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let r = app.session(phone_access).await;
    r.unauthorized();
    assert_reason(&r.body, "invalid_token", "revoked");
    let r = app.refresh(phone["refresh_token"].as_str().unwrap()).await;
    r.err(400, "invalid_grant");
    assert_reason(&r.body, "invalid_grant", "revoked");
    assert_eq!(
        events.next_event(std::time::Duration::from_secs(5)).await,
        Said::Event("revoked".into(), json!({"reason": "revoked"}))
    );
    app.session(user.access()).await.ok();
    assert_eq!(ids(&app.sessions(user.access()).await), [user.sid()]);
    // Now no longer live: 404, as for anything else that is no session of
    // the user's.
    let (status, r) = app
        .end_session(user.access(), phone["session_id"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    r.unwrap().err(404, "not_found");
    for id in [uuid(), "not-a-session".into(), "%20".into()] {
        let (status, r) = app.end_session(user.access(), &id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
        r.unwrap().err(404, "not_found");
    }
}

#[tokio::test]
async fn another_users_session_is_not_found_and_stays_alive() {
    let app = App::new().await;
    let user = app.user().await;
    let stranger = app.user().await;
    let (status, r) = app.end_session(user.access(), stranger.sid()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    r.unwrap().err(404, "not_found");
    app.session(stranger.access()).await.ok();
    app.refresh(stranger.refresh()).await.ok();
    app.get("/v1/auth/sessions", None)
        .await
        .err(401, "invalid_token");
}

#[tokio::test]
async fn revoke_others_keeps_only_the_calling_session() {
    let app = App::new().await;
    let (user, others, stranger) = three_devices_and_a_stranger(&app).await;
    let r = app
        .form("/v1/auth/sessions/revoke-others", "", Some(user.access()))
        .await;
    assert_eq!(r.ok(), &json!({"revoked": 2}));
    for t in &others {
        app.session(t["access_token"].as_str().unwrap())
            .await
            .unauthorized();
    }
    app.session(user.access()).await.ok();
    app.session(stranger.access()).await.ok();
    let r = app
        .form("/v1/auth/sessions/revoke-others", "", Some(user.access()))
        .await;
    assert_eq!(r.ok(), &json!({"revoked": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_leaves_only_the_changing_session_alive() {
    let app = App::new().await;
    let (user, others, stranger) = three_devices_and_a_stranger(&app).await;
    let home = ip(1);
    let r = app
        .change_password_from(home, user.access(), &user.password, "a new secret")
        .await;
    assert_eq!(r.ok(), &json!({"revoked": 2}));
    for t in &others {
        let r = app.session(t["access_token"].as_str().unwrap()).await;
        r.unauthorized();
        assert_reason(&r.body, "invalid_token", "revoked");
        app.refresh(t["refresh_token"].as_str().unwrap())
            .await
            .err(400, "invalid_grant");
    }
    app.session(user.access()).await.ok();
    app.refresh(user.refresh()).await.ok();
    app.session(stranger.access()).await.ok();
    // The new password signs in; the old one no longer does.
    app.login_as(&user.name, &user.password)
        .await
        .err(400, "invalid_grant");
    app.login_as(&user.name, "a new secret").await.ok();
}

#[tokio::test]
async fn a_new_password_must_be_8_characters_to_1024_bytes() {
    let app = App::new().await;
    let user = app.user().await;
    let other = another_device(&app, &user, "a").await;
    for bad in ["1234567".to_owned(), "x".repeat(1025), "é".repeat(513)] {
        app.change_password_from(ip(1), user.access(), &user.password, &bad)
            .await
            .err(400, "invalid_request");
    }
    // Eight characters (not bytes), and exactly 1024 bytes, are allowed.
    app.change_password_from(ip(1), user.access(), &user.password, "éééééééé")
        .await
        .ok();
    app.change_password_from(ip(1), user.access(), "éééééééé", &"y".repeat(1024))
        .await
        .ok();
    app.session(other["access_token"].as_str().unwrap())
        .await
        .unauthorized();
    // Malformed bodies and no token.
    let bad_json = request(
        Method::POST,
        "/v1/account/password",
        Some(JSON),
        Body::from(r#"{"current_password": 5}"#),
        Some(user.access()),
    );
    app.call(bad_json).await.err(400, "invalid_request");
    let form = request(
        Method::POST,
        "/v1/account/password",
        Some(FORM),
        Body::from("current_password=x&new_password=y"),
        Some(user.access()),
    );
    app.call(form).await.err(415, "invalid_request");
    let r = app
        .change_password_from(ip(1), "not.a.token", &user.password, "a new secret")
        .await;
    r.unauthorized();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_current_password_counts_as_a_failed_login() {
    let app = App::new().await;
    let user = app.user().await;
    let other = another_device(&app, &user, "a").await;
    let attacker = ip(7);
    for _ in 0..10 {
        let r = app
            .change_password_from(attacker, user.access(), "wrong", "a new secret")
            .await;
        r.err(400, "invalid_grant");
    }
    let r = app
        .change_password_from(attacker, user.access(), &user.password, "a new secret")
        .await;
    r.err(429, "slow_down");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&after), "{after}");
    // Sign-ins of that user from that address are slowed down too...
    let sign_in = sign_in_request(&user.name, &user.password);
    app.call_from(attacker, sign_in).await.err(429, "slow_down");
    // ...and nothing was changed or revoked.
    app.session(other["access_token"].as_str().unwrap())
        .await
        .ok();
    app.call_from(ip(8), sign_in_request(&user.name, &user.password))
        .await
        .ok();
}
