//! Access tokens on every authenticated route: forged, expired, missing, or
//! sent with another scheme.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use crate::app::*;
use latchkey_testkit::*;

/// Every kind of bad access token, each with a label, made against `u`'s
/// real session (so only the forgery itself can be what is refused).
fn forgeries(app: &App, u: &User, other: &User, public_x: &str) -> Vec<(String, String)> {
    let (key, kid) = app.signing_key();
    let good = jwt_part(u.access(), 1);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let signed = |h: Value, c: Value| sign_raw(&key, &h, &c);
    let foreign = SigningKey::from_bytes(&[42u8; 32]);
    let now = now();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |label: &str, t: String| out.push((label.to_string(), t));

    for t in alg_none(&kid, &good) {
        add("alg none", t);
    }
    for t in hs256_with_public_key(public_x, &kid, &good) {
        add("HS256 keyed with the public key", t);
    }
    add(
        "RS256 header, real signature",
        signed(
            json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}),
            good.clone(),
        ),
    );
    add(
        "lowercase alg, real signature",
        signed(
            json!({"alg": "eddsa", "typ": "at+jwt", "kid": kid}),
            good.clone(),
        ),
    );
    add(
        "alg missing",
        signed(json!({"typ": "at+jwt", "kid": kid}), good.clone()),
    );
    add(
        "tampered name",
        tamper(u.access(), &with(&|c| c["name"] = json!(other.name))),
    );
    add(
        "tampered sub and sid",
        tamper(
            u.access(),
            &with(&|c| {
                c["sub"] = json!(other.id());
                c["sid"] = json!(other.sid());
            }),
        ),
    );
    add(
        "tampered exp",
        tamper(u.access(), &with(&|c| c["exp"] = json!(now + 86_400 * 365))),
    );
    add(
        "foreign key, the server's kid",
        sign_raw(&foreign, &header(&kid), &good),
    );
    add(
        "foreign key, its own kid",
        sign_raw(&foreign, &header("attacker"), &good),
    );
    add("unknown kid", signed(header("nope"), good.clone()));
    add(
        "no kid",
        signed(json!({"alg": "EdDSA", "typ": "at+jwt"}), good.clone()),
    );
    add(
        "expired",
        signed(
            header(&kid),
            with(&|c| {
                c["iat"] = json!(now - 3600);
                c["nbf"] = json!(now - 3600);
                c["exp"] = json!(now - 120);
            }),
        ),
    );
    add(
        "not yet valid",
        signed(
            header(&kid),
            with(&|c| {
                c["nbf"] = json!(now + 600);
                c["exp"] = json!(now + 1200);
            }),
        ),
    );
    add(
        "wrong iss",
        signed(
            header(&kid),
            with(&|c| c["iss"] = json!("http://evil.test")),
        ),
    );
    add(
        "iss with a trailing slash",
        signed(
            header(&kid),
            with(&|c| c["iss"] = json!(format!("{ISSUER}/"))),
        ),
    );
    add(
        "wrong aud",
        signed(header(&kid), with(&|c| c["aud"] = json!("someone-else"))),
    );
    add(
        "aud list without latchkey",
        signed(header(&kid), with(&|c| c["aud"] = json!(["a", "b"]))),
    );
    add(
        "no aud",
        signed(
            header(&kid),
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
    );
    add(
        "no sid",
        signed(
            header(&kid),
            with(&|c| {
                c.as_object_mut().unwrap().remove("sid");
            }),
        ),
    );
    add(
        "exp as text",
        signed(header(&kid), with(&|c| c["exp"] = json!("later"))),
    );
    add(
        "typ JWT",
        signed(
            json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
            good.clone(),
        ),
    );
    add(
        "no typ",
        signed(json!({"alg": "EdDSA", "kid": kid}), good.clone()),
    );
    add(
        "crit header",
        signed(
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "crit": ["exp"]}),
            good.clone(),
        ),
    );
    add(
        "over 8 KiB, properly signed",
        signed(
            header(&kid),
            with(&|c| c["pad"] = json!("x".repeat(9 * 1024))),
        ),
    );
    add(
        "unknown session",
        signed(header(&kid), with(&|c| c["sid"] = json!(uuid()))),
    );
    add(
        "sub of another user",
        signed(header(&kid), with(&|c| c["sub"] = json!(other.id()))),
    );
    let parts: Vec<&str> = u.access().split('.').collect();
    add(
        "truncated signature",
        format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]),
    );
    add("no signature", format!("{}.{}.", parts[0], parts[1]));
    add("two parts", format!("{}.{}", parts[0], parts[1]));
    add("four parts", format!("{}.x", u.access()));
    add(
        "padded base64",
        format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
    );
    for g in garbage_tokens() {
        add("garbage", g);
    }
    add("huge garbage", "a".repeat(20_000));
    out
}

#[tokio::test]
async fn forged_and_invalid_access_tokens_are_refused_everywhere() {
    let app = App::new().await;
    let u = app.user().await;
    let other = app.user().await;
    let jwks = app.jwks().await;
    let x = jwks["keys"][0]["x"].as_str().unwrap().to_string();
    let list = forgeries(&app, &u, &other, &x);
    assert!(list.len() > 40);
    for (label, token) in &list {
        for r in [
            app.session(token).await,
            app.pull(token, "?since=0").await,
            app.push(token, &ops(vec![upsert(&uuid(), &uuid(), 0, "x", "y")]))
                .await,
            app.get(&format!("/v1/notes/{}/history", uuid()), Some(token))
                .await,
        ] {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{label}: {}", r.body);
            r.unauthorized();
            let text = String::from_utf8_lossy(&r.raw);
            assert!(!text.contains(token.as_str()), "{label}: token echoed");
        }
    }
    // The expired one says so, for the app to refresh rather than sign out.
    let expired = &list.iter().find(|(l, _)| l == "expired").unwrap().1;
    assert_eq!(app.session(expired).await.body["reason"], "expired");
    // No forged push was applied, and the real tokens still work.
    let pulled = app.pull_ok(u.access(), "").await;
    assert_eq!(pulled["changes"], json!([]));
    assert_eq!(app.pull_ok(other.access(), "").await["changes"], json!([]));
}

#[tokio::test]
async fn time_claims_are_checked_with_the_leeway() {
    let app = App::new().await;
    let u = app.user().await;
    let (key, kid) = app.signing_key();
    let good = jwt_part(u.access(), 1);
    let now = now();
    let at = |nbf: i64, exp: i64| {
        let mut c = good.clone();
        c["nbf"] = json!(nbf);
        c["exp"] = json!(exp);
        sign_raw(&key, &header(&kid), &c)
    };
    // Default leeway 30 s.
    app.session(&at(now - 100, now - 10)).await.ok();
    app.session(&at(now + 10, now + 100)).await.ok();
    app.session(&at(now - 100, now - 50)).await.unauthorized();
    app.session(&at(now + 50, now + 100)).await.unauthorized();

    let strict = App::with(&["--leeway", "0s"]).await;
    let u = strict.user().await;
    let (key, kid) = strict.signing_key();
    let mut c = jwt_part(u.access(), 1);
    c["exp"] = json!(now - 3);
    let r = strict.session(&sign_raw(&key, &header(&kid), &c)).await;
    r.unauthorized();
    assert_eq!(r.body["reason"], "expired");
}

#[tokio::test]
async fn a_missing_token_is_401_without_an_error_code() {
    let app = App::new().await;
    for (method, path) in [
        (Method::GET, "/v1/auth/session"),
        (Method::GET, "/v1/sync/pull"),
        (Method::POST, "/v1/sync/push"),
        (Method::GET, EVENTS_PATH),
        (
            Method::GET,
            "/v1/notes/00000000-0000-0000-0000-000000000000/history",
        ),
    ] {
        let ct = (method == Method::POST).then_some(JSON);
        let body = if method == Method::POST {
            Body::from(r#"{"ops":[]}"#)
        } else {
            Body::empty()
        };
        let r = app.call(request(method, path, ct, body, None)).await;
        r.err(401, "invalid_token");
        let www = r.header("www-authenticate").unwrap();
        assert!(www.starts_with("Bearer"), "{www}");
        assert!(!www.contains("error="), "{path}: {www}");
    }
}

#[tokio::test]
async fn other_authorization_schemes_are_not_a_bearer_token() {
    let app = App::new().await;
    let u = app.user().await;
    for value in [
        "Basic dXNlcjpwYXNz".to_string(),
        format!("Token {}", u.access()),
        u.access().to_string(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
    ] {
        let req = Request::builder()
            .uri("/v1/auth/session")
            .header(header::AUTHORIZATION, value.as_str())
            .body(Body::empty())
            .unwrap();
        let r = app.call(req).await;
        r.err(401, "invalid_token");
        let www = r.header("www-authenticate").unwrap();
        assert!(www.starts_with("Bearer"), "{value}: {www}");
        // RFC 6750 §3.1: no error code when no bearer token was sent.
        assert!(!www.contains("error="), "{value}: {www}");
    }
    // A bearer token that is not even text.
    let req = Request::builder()
        .uri("/v1/auth/session")
        .header(
            header::AUTHORIZATION,
            axum::http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    app.call(req).await.unauthorized();
    // The scheme is case-insensitive (RFC 7235).
    let req = Request::builder()
        .uri("/v1/auth/session")
        .header(header::AUTHORIZATION, format!("bearer {}", u.access()))
        .body(Body::empty())
        .unwrap();
    app.call(req).await.ok();
}
