//! `POST /v1/auth/token` with the password grant, its refusals, and `GET
//! /v1/auth/session`.

use axum::body::Body;
use axum::http::{Method, header};
use latchkey_protocol::{Jwks, KeySet};
use serde_json::json;

use crate::app::*;
use latchkey_testkit::*;

#[tokio::test]
async fn password_grant_returns_a_verifiable_access_token() {
    let app = App::new().await;
    let (name, pw) = app.add_user().await;
    let r = app.login_as(&name, &pw).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t = r.ok();
    assert_token_response(t, &name);
    assert_eq!(t["expires_in"], 900);
    assert_eq!(t["refresh_expires_in"], 30 * 24 * 3600);

    let at = t["access_token"].as_str().unwrap();
    let (_, kid) = app.signing_key();
    assert_eq!(
        jwt_part(at, 0),
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid})
    );
    let c = jwt_part(at, 1);
    assert_keys(
        &c,
        &[
            "iss", "aud", "sub", "name", "sid", "jti", "iat", "nbf", "exp",
        ],
    );
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["aud"], "latchkey");
    assert_eq!(c["sub"], t["user"]["id"]);
    assert_eq!(c["name"], name.as_str());
    assert_eq!(c["sid"], t["session_id"]);
    assert!(c["jti"].as_str().is_some_and(|s| !s.is_empty()));
    let iat = c["iat"].as_i64().unwrap();
    assert!((iat - now()).abs() <= 5);
    assert_eq!(c["nbf"], iat);
    assert_eq!(c["exp"].as_i64().unwrap() - iat, 900);

    // The app's offline check: the published JWKS verifies it.
    let jwks: Jwks = serde_json::from_value(app.jwks().await).unwrap();
    let set = KeySet::from_jwks(&jwks).unwrap();
    set.verify(at, ISSUER, now(), 30).unwrap();

    // Each sign-in is its own session.
    let again = app.login_as(&name, &pw).await.ok().clone();
    assert_ne!(again["session_id"], t["session_id"]);
    assert_eq!(again["user"]["id"], t["user"]["id"]);
    assert_ne!(again["refresh_token"], t["refresh_token"]);
}

#[tokio::test]
async fn configured_lifetimes_show_in_the_token_answer() {
    let app = App::with(&["--access-ttl", "2m", "--refresh-ttl", "1h"]).await;
    let u = app.user().await;
    assert_eq!(u.token["expires_in"], 120);
    assert_eq!(u.token["refresh_expires_in"], 3600);
    let c = jwt_part(u.access(), 1);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);
}

#[tokio::test]
async fn session_endpoint_describes_the_session() {
    let app = App::new().await;
    let u = app.user().await;
    let s = app.session(u.access()).await.ok().clone();
    assert_keys(
        &s,
        &["session_id", "user", "expires_at", "refresh_expires_at"],
    );
    assert_eq!(s["session_id"], u.token["session_id"]);
    assert_eq!(s["user"], json!({"id": u.id(), "username": u.name}));
    assert_eq!(s["expires_at"], jwt_part(u.access(), 1)["exp"]);
    let end = s["refresh_expires_at"].as_i64().unwrap();
    assert!((end - (now() + 30 * 24 * 3600)).abs() <= 5, "{end}");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let app = App::new().await;
    let u = app.user().await;
    let wrong = app.login_as(&u.name, "not-the-password").await;
    wrong.err(400, "invalid_grant");
    let unknown = app.login_as(&unique("ghost"), "whatever").await;
    unknown.err(400, "invalid_grant");
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.header("cache-control"), Some("no-store"));
    // The wrong password is not echoed back.
    assert!(!String::from_utf8_lossy(&wrong.raw).contains("not-the-password"));
    // Empty password.
    app.login_as(&u.name, "").await.err(400, "invalid_grant");
}

#[tokio::test]
async fn token_endpoint_refuses_malformed_requests() {
    let app = App::new().await;
    let u = app.user().await;
    let pw = format!("password={}", enc(&u.password));
    let name = format!("username={}", enc(&u.name));
    let bad_forms = [
        String::new(),
        "grant_type=".into(),
        format!("{name}&{pw}"),
        format!("grant_type=password&{pw}"),
        format!("grant_type=password&{name}"),
        "grant_type=refresh_token".into(),
        "grant_type=refresh_token&refresh_token=".into(),
        // every field at most once (RFC 6749 §3.2)
        format!("grant_type=password&grant_type=password&{name}&{pw}"),
        format!("grant_type=password&{name}&{name}&{pw}"),
        format!("grant_type=password&{name}&{pw}&{pw}"),
    ];
    for form in bad_forms {
        let r = app.form("/v1/auth/token", &form, None).await;
        r.err(400, "invalid_request");
        assert!(!String::from_utf8_lossy(&r.raw).contains(&u.password));
    }
    // Not UTF-8.
    let r = app
        .call(request(
            Method::POST,
            "/v1/auth/token",
            Some(FORM),
            Body::from(&b"grant_type=password&username=\xff\xfe&password=x"[..]),
            None,
        ))
        .await;
    r.err(400, "invalid_request");
}

#[tokio::test]
async fn token_endpoint_refuses_unknown_grant_types() {
    let app = App::new().await;
    for g in [
        "client_credentials",
        "authorization_code",
        "implicit",
        "urn:ietf:params:oauth:grant-type:device_code",
        "PASSWORD",
        "x",
    ] {
        app.form(
            "/v1/auth/token",
            &format!("grant_type={}&username=a&password=b", enc(g)),
            None,
        )
        .await
        .err(400, "unsupported_grant_type");
    }
}

#[tokio::test]
async fn token_endpoint_wants_a_form_body() {
    let app = App::new().await;
    let u = app.user().await;
    let form = format!(
        "grant_type=password&username={}&password={}",
        enc(&u.name),
        enc(&u.password)
    );
    for ct in [
        None,
        Some("application/json"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
    ] {
        app.call(request(
            Method::POST,
            "/v1/auth/token",
            ct,
            Body::from(form.clone()),
            None,
        ))
        .await
        .err(415, "invalid_request");
    }
    let json = json!({"grant_type": "password", "username": u.name, "password": u.password});
    app.call(request(
        Method::POST,
        "/v1/auth/token",
        Some(JSON),
        Body::from(json.to_string()),
        None,
    ))
    .await
    .err(415, "invalid_request");
    // Parameters of the media type are fine.
    app.call(request(
        Method::POST,
        "/v1/auth/token",
        Some("application/x-www-form-urlencoded; charset=UTF-8"),
        Body::from(form),
        None,
    ))
    .await
    .ok();
}

#[tokio::test]
async fn token_endpoint_refuses_huge_forms() {
    let app = App::new().await;
    let form = format!(
        "grant_type=password&username=a&password={}",
        "x".repeat(100_000)
    );
    app.form("/v1/auth/token", &form, None)
        .await
        .err(413, "request_too_large");
    // With a Content-Length that says so up front.
    let mut req = request(
        Method::POST,
        "/v1/auth/token",
        Some(FORM),
        Body::from(form.clone()),
        None,
    );
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, form.len().into());
    app.call(req).await.err(413, "request_too_large");
}

#[tokio::test]
async fn a_fresh_sign_in_by_a_username_with_odd_characters_works() {
    let app = App::new().await;
    let name = format!("ünï-{}", unique("ç@+&=%"));
    let pw = "p@ss w0rd&=+%ü".to_string();
    app.add_user_named(&name, &pw).await;
    let t = app.login_as(&name, &pw).await.ok().clone();
    assert_eq!(t["user"]["username"], name.as_str());
    assert_eq!(
        jwt_part(t["access_token"].as_str().unwrap(), 1)["name"],
        name.as_str()
    );
}
