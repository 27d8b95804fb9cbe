//! What every route shares: 404 for an unknown path, 405 for a wrong method,
//! and never a 5xx for junk.

use axum::body::Body;
use axum::http::Method;

use crate::app::*;

#[tokio::test]
async fn unknown_routes_are_404_not_found() {
    let app = App::new().await;
    for path in [
        "/",
        "/nope",
        "/v1",
        "/v1/sync",
        "/v2/sync/push",
        "/v1/auth/token/extra",
        "/.well-known/jwks",
        "/healthz/",
    ] {
        app.get(path, None).await.err(404, "not_found");
    }
    let t = app.user().await;
    app.get("/v1/sync/nothing", Some(t.access()))
        .await
        .err(404, "not_found");
}

#[tokio::test]
async fn wrong_methods_are_405_method_not_allowed() {
    let app = App::new().await;
    let cases = [
        (Method::POST, "/healthz"),
        (Method::PUT, "/.well-known/jwks.json"),
        (Method::POST, "/.well-known/oauth-authorization-server"),
        (Method::GET, "/v1/auth/token"),
        (Method::DELETE, "/v1/auth/token"),
        (Method::GET, "/v1/auth/revoke"),
        (Method::POST, "/v1/auth/session"),
        (Method::GET, "/v1/sync/push"),
        (Method::PUT, "/v1/sync/push"),
        (Method::POST, "/v1/sync/pull"),
        (Method::PATCH, "/v1/sync/pull"),
    ];
    for (method, path) in cases {
        app.call(request(method, path, None, Body::empty(), None))
            .await
            .err(405, "method_not_allowed");
    }
}

#[tokio::test]
async fn bad_input_never_gets_a_5xx() {
    let app = App::new().await;
    let u = app.user().await;
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0u8; 100],
        (0..=255u8).collect(),
        b"%%%%&&&===".to_vec(),
        b"grant_type=password&username=%00&password=%00".to_vec(),
        b"grant_type=refresh_token&refresh_token=%FF".to_vec(),
        br#"{"ops":[{"action":"upsert"}]}"#.to_vec(),
        "\u{202e}\u{0}".as_bytes().to_vec(),
    ];
    let paths = [
        (Method::POST, "/v1/auth/token"),
        (Method::POST, "/v1/auth/revoke"),
        (Method::POST, "/v1/sync/push"),
        (Method::GET, "/v1/sync/pull"),
        (Method::GET, "/v1/auth/session"),
    ];
    for body in &junk {
        for (method, path) in &paths {
            for ct in [FORM, JSON, "application/octet-stream"] {
                for token in [None, Some(u.access())] {
                    // `call` itself asserts: no 5xx, no 422, a protocol body.
                    app.call(request(
                        method.clone(),
                        path,
                        Some(ct),
                        Body::from(body.clone()),
                        token,
                    ))
                    .await;
                }
            }
        }
    }
    // Odd paths and queries.
    for path in [
        "/v1/sync/pull?since=%FF",
        "/v1/sync/pull?%00=%00",
        "/v1/sync/pull?since=1&since=2",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/v1/sync/pull/../../healthz",
    ] {
        app.get(path, Some(u.access())).await;
    }
}
