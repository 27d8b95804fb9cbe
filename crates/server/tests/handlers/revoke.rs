//! `POST /v1/auth/revoke`: logout by refresh token or by bearer access token.

use axum::body::Body;
use axum::http::Method;
use serde_json::json;

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test]
async fn revoke_by_refresh_token_ends_the_session() {
    let app = App::new().await;
    let u = app.user().await;
    let other = app.user().await;
    let r = app
        .form(
            "/v1/auth/revoke",
            &format!("token={}", enc(u.refresh())),
            None,
        )
        .await;
    r.ok();
    let r = app.session(u.access()).await;
    r.unauthorized();
    assert_eq!(r.body["reason"], "revoked");
    let r = app.refresh(u.refresh()).await;
    assert_reason(&r.body, "invalid_grant", "revoked");
    app.pull(u.access(), "").await.unauthorized();
    // Revoking again, or a token of a dead session: still 200.
    app.form(
        "/v1/auth/revoke",
        &format!("token={}", enc(u.refresh())),
        None,
    )
    .await
    .ok();
    app.session(other.access()).await.ok();
}

#[tokio::test]
async fn revoke_with_a_hint_and_charset_is_accepted() {
    let app = App::new().await;
    let u = app.user().await;
    app.call(request(
        Method::POST,
        "/v1/auth/revoke",
        Some("application/x-www-form-urlencoded; charset=utf-8"),
        Body::from(format!(
            "token={}&token_type_hint=refresh_token",
            enc(u.refresh())
        )),
        None,
    ))
    .await
    .ok();
    app.session(u.access()).await.unauthorized();
}

#[tokio::test]
async fn revoke_by_bearer_with_an_empty_body_ends_the_session() {
    let app = App::new().await;
    let u = app.user().await;
    let keep = app.login_as(&u.name, &u.password).await.ok().clone();
    app.call(request(
        Method::POST,
        "/v1/auth/revoke",
        None,
        Body::empty(),
        Some(u.access()),
    ))
    .await
    .ok();
    app.session(u.access()).await.unauthorized();
    assert_reason(
        &app.refresh(u.refresh()).await.body,
        "invalid_grant",
        "revoked",
    );
    // Only that session: the user's other sign-in lives on.
    app.session(keep["access_token"].as_str().unwrap())
        .await
        .ok();
    // Revoking an already revoked session is fine.
    app.call(request(
        Method::POST,
        "/v1/auth/revoke",
        Some(FORM),
        Body::empty(),
        Some(u.access()),
    ))
    .await
    .ok();
}

#[tokio::test]
async fn revoke_with_an_expired_access_token_still_logs_out() {
    let app = App::new().await;
    let u = app.user().await;
    let (key, kid) = app.signing_key();
    let mut c = jwt_part(u.access(), 1);
    c["iat"] = json!(now() - 3600);
    c["nbf"] = json!(now() - 3600);
    c["exp"] = json!(now() - 1800);
    let expired = sign_raw(&key, &header(&kid), &c);
    app.session(&expired).await.unauthorized();
    app.call(request(
        Method::POST,
        "/v1/auth/revoke",
        None,
        Body::empty(),
        Some(&expired),
    ))
    .await
    .ok();
    app.session(u.access()).await.unauthorized();
}

#[tokio::test]
async fn revoke_of_an_unknown_token_is_200() {
    let app = App::new().await;
    let u = app.user().await;
    for t in ["unknown", &b64(&[1u8; 32]), u.access()] {
        app.form("/v1/auth/revoke", &format!("token={}", enc(t)), None)
            .await
            .ok();
    }
    app.session(u.access()).await.ok();
}

#[tokio::test]
async fn revoke_refuses_malformed_requests() {
    let app = App::new().await;
    // Nothing to revoke named at all.
    app.call(request(
        Method::POST,
        "/v1/auth/revoke",
        None,
        Body::empty(),
        None,
    ))
    .await
    .err(400, "invalid_request");
    app.form("/v1/auth/revoke", "token_type_hint=refresh_token", None)
        .await
        .err(400, "invalid_request");
    app.form("/v1/auth/revoke", "token=a&token=b", None)
        .await
        .err(400, "invalid_request");
    app.call(request(
        Method::POST,
        "/v1/auth/revoke",
        Some("text/plain"),
        Body::from("token=abc"),
        None,
    ))
    .await
    .err(415, "invalid_request");
    app.call(request(
        Method::POST,
        "/v1/auth/revoke",
        Some(JSON),
        Body::from(r#"{"token":"abc"}"#),
        None,
    ))
    .await
    .err(415, "invalid_request");
    app.form(
        "/v1/auth/revoke",
        &format!("token={}", "x".repeat(100_000)),
        None,
    )
    .await
    .err(413, "request_too_large");
    // A forged bearer token is refused, not silently accepted.
    let (key, kid) = app.signing_key();
    let forged = tamper(
        &sign_raw(&key, &header(&kid), &claims(ISSUER, "a", "a", "s")),
        &claims(ISSUER, "b", "b", "s"),
    );
    app.call(request(
        Method::POST,
        "/v1/auth/revoke",
        None,
        Body::empty(),
        Some(&forged),
    ))
    .await
    .unauthorized();
}
