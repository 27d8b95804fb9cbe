//! Handler tests: the whole `Router` driven with `oneshot`, over a state
//! built on a temporary SQLite database. Every answer goes through
//! [`App::call`], which also checks the invariants PROTOCOL.md sets for all
//! answers: never a 5xx or a 422, every error a protocol error body.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use clap::Parser as _;
use common::*;
use ed25519_dalek::SigningKey;
use http_body_util::BodyExt as _;
use latchkey_protocol::{Jwks, KeySet};
use latchkey_server::config::Command;
use latchkey_server::state::AppState;
use latchkey_server::store::Store as _;
use latchkey_server::{Cli, build_state};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const ISSUER: &str = "http://latchkey.test:8787";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// One answer, read whole.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    raw: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a protocol error with this status and code.
    fn err(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_error(&self.body, code);
        self
    }

    /// Asserts a 401 `invalid_token` with `WWW-Authenticate: Bearer ...
    /// error="invalid_token"` (a token was sent).
    fn unauthorized(&self) -> &Self {
        self.err(401, "invalid_token");
        let www = self.header("www-authenticate").expect("WWW-Authenticate");
        assert!(www.starts_with("Bearer"), "{www}");
        assert!(www.contains(r#"error="invalid_token""#), "{www}");
        self
    }

    fn ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        &self.body
    }
}

/// A router over a fresh database, and handles to its state.
struct App {
    router: Router,
    state: AppState,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

/// A signed-in user.
struct User {
    name: String,
    password: String,
    token: Value,
}

impl User {
    fn access(&self) -> &str {
        self.token["access_token"].as_str().unwrap()
    }
    fn refresh(&self) -> &str {
        self.token["refresh_token"].as_str().unwrap()
    }
    fn id(&self) -> &str {
        self.token["user"]["id"].as_str().unwrap()
    }
    fn sid(&self) -> &str {
        self.token["session_id"].as_str().unwrap()
    }
}

impl App {
    async fn new() -> Self {
        Self::with(&[]).await
    }

    /// An app started with extra `serve` flags.
    async fn with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let mut argv = vec!["latchkey-server", "serve", "--db", db.to_str().unwrap()];
        argv.extend_from_slice(extra);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        args.validate().unwrap();
        let state = build_state(&args, ISSUER.into()).await.unwrap();
        Self {
            router: latchkey_server::http::router(state.clone()),
            state,
            db,
            _dir: dir,
        }
    }

    async fn call(&self, req: Request<Body>) -> Resp {
        self.call_from(IpAddr::V4(Ipv4Addr::LOCALHOST), req).await
    }

    /// Sends `req` as if from `ip`, and checks the answer's invariants.
    async fn call_from(&self, ip: IpAddr, mut req: Request<Body>) -> Resp {
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 40000)));
        let what = format!("{} {}", req.method(), req.uri());
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let raw = body.collect().await.unwrap().to_bytes();
        let status = parts.status;
        // The one 5xx allowed: 503 temporarily_unavailable (a busy hasher).
        let busy = status == StatusCode::SERVICE_UNAVAILABLE
            && raw.starts_with(br#"{"error":"temporarily_unavailable""#);
        assert!(
            (!status.is_server_error() || busy) && status != StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {status} {}",
            String::from_utf8_lossy(&raw)
        );
        let body: Value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| panic!("{what}: not JSON: {:?}", String::from_utf8_lossy(&raw)))
        };
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(ct, "application/json; charset=utf-8", "{what}");
        if !status.is_success() {
            assert!(body["error"].is_string(), "{what}: {status} {body}");
            assert!(body["error_description"].is_string(), "{what}: {body}");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(body["error"], "invalid_token", "{what}");
                assert!(
                    parts.headers.contains_key(header::WWW_AUTHENTICATE),
                    "{what}"
                );
            }
        }
        Resp {
            status,
            headers: parts.headers,
            body,
            raw,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(request(Method::GET, path, None, Body::empty(), token))
            .await
    }

    async fn form(&self, path: &str, form: &str, token: Option<&str>) -> Resp {
        self.call(request(
            Method::POST,
            path,
            Some(FORM),
            Body::from(form.to_owned()),
            token,
        ))
        .await
    }

    async fn push(&self, token: &str, body: &Value) -> Resp {
        self.call(request(
            Method::POST,
            "/v1/sync/push",
            Some(JSON),
            Body::from(serde_json::to_vec(body).unwrap()),
            Some(token),
        ))
        .await
    }

    async fn push_ok(&self, token: &str, ops: Vec<Value>) -> Value {
        self.push(token, &common::ops(ops)).await.ok().clone()
    }

    async fn pull(&self, token: &str, query: &str) -> Resp {
        self.get(&format!("/v1/sync/pull{query}"), Some(token))
            .await
    }

    async fn pull_ok(&self, token: &str, query: &str) -> Value {
        self.pull(token, query).await.ok().clone()
    }

    /// Creates a user directly in the store.
    async fn add_user(&self) -> (String, String) {
        let name = unique("user");
        let pw = password();
        let p = pw.clone();
        let hash =
            tokio::task::spawn_blocking(move || latchkey_server::auth::hash_password_blocking(&p))
                .await
                .unwrap()
                .unwrap();
        self.state
            .store
            .create_user(&name, &hash, now())
            .await
            .unwrap();
        (name, pw)
    }

    async fn login_as(&self, name: &str, pw: &str) -> Resp {
        self.form(
            "/v1/auth/token",
            &format!(
                "grant_type=password&username={}&password={}",
                enc(name),
                enc(pw)
            ),
            None,
        )
        .await
    }

    /// A new user, signed in.
    async fn user(&self) -> User {
        let (name, password) = self.add_user().await;
        let token = self.login_as(&name, &password).await.ok().clone();
        User {
            name,
            password,
            token,
        }
    }

    async fn refresh(&self, refresh_token: &str) -> Resp {
        self.form(
            "/v1/auth/token",
            &format!(
                "grant_type=refresh_token&refresh_token={}",
                enc(refresh_token)
            ),
            None,
        )
        .await
    }

    async fn session(&self, access: &str) -> Resp {
        self.get("/v1/auth/session", Some(access)).await
    }

    /// The server's current signing key and its kid.
    fn signing_key(&self) -> (SigningKey, String) {
        let view = self.state.keys.current();
        (view.signing.clone(), view.kid.clone())
    }

    async fn jwks(&self) -> Value {
        self.get("/.well-known/jwks.json", None).await.ok().clone()
    }

    /// A second handle on the same database, as another process would have.
    async fn other_process(&self) -> latchkey_server::store::SqliteStore {
        latchkey_server::server::open_store(&self.db).await.unwrap()
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn request(
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Body,
    token: Option<&str>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(body).unwrap()
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 9, 8, last))
}

// ---------------------------------------------------------------- metadata

#[tokio::test]
async fn healthz_answers_ok() {
    let app = App::new().await;
    let r = app.get("/healthz", None).await;
    assert_eq!(r.ok(), &json!({"status": "ok"}));
}

#[tokio::test]
async fn metadata_lists_issuer_and_endpoints() {
    let app = App::new().await;
    let r = app
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    let m = r.ok();
    assert_keys(
        m,
        &[
            "issuer",
            "token_endpoint",
            "revocation_endpoint",
            "jwks_uri",
            "grant_types_supported",
        ],
    );
    assert_eq!(m["issuer"], ISSUER);
    assert_eq!(m["token_endpoint"], format!("{ISSUER}/v1/auth/token"));
    assert_eq!(m["revocation_endpoint"], format!("{ISSUER}/v1/auth/revoke"));
    assert_eq!(m["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(
        m["grant_types_supported"],
        json!(["password", "refresh_token"])
    );
}

#[tokio::test]
async fn jwks_lists_the_signing_key_and_is_cacheable() {
    let app = App::new().await;
    let r = app.get("/.well-known/jwks.json", None).await;
    let cc = r.header("cache-control").unwrap();
    assert!(cc.contains("max-age=300"), "{cc}");
    let jwks = r.ok();
    assert_keys(jwks, &["keys"]);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_keys(k, &["kty", "crv", "x", "kid", "alg", "use"]);
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert_eq!(k["alg"], "EdDSA");
    assert_eq!(k["use"], "sig");
    let x = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        k["x"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(x.len(), 32);
    let (key, kid) = app.signing_key();
    assert_eq!(k["kid"], kid.as_str());
    assert_eq!(x, key.verifying_key().as_bytes());
}

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

// ------------------------------------------------------------------ tokens

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

// -------------------------------------------------------------- throttling

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_failures_slow_down_that_user_from_that_address_only() {
    let app = App::new().await;
    let (name, pw) = app.add_user().await;
    let (other, other_pw) = app.add_user().await;
    let attacker = ip(1);
    let wrong = |n: &str| {
        request(
            Method::POST,
            "/v1/auth/token",
            Some(FORM),
            Body::from(format!(
                "grant_type=password&username={}&password=wrong",
                enc(n)
            )),
            None,
        )
    };
    let right = |n: &str, p: &str| {
        request(
            Method::POST,
            "/v1/auth/token",
            Some(FORM),
            Body::from(format!(
                "grant_type=password&username={}&password={}",
                enc(n),
                enc(p)
            )),
            None,
        )
    };
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

// --------------------------------------------------- refresh-token rotation

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
    let conn = rusqlite::Connection::open(&app.db).unwrap();
    let live: Vec<Vec<u8>> = conn
        .prepare(
            "SELECT hash FROM refresh_tokens WHERE session_id = ?1 \
             AND used_at IS NULL AND retired_at IS NULL",
        )
        .unwrap()
        .query_map([u.sid()], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
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

// ------------------------------------------------------------------ revoke

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

// ---------------------------------------------------------- forged tokens

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

// ----------------------------------- changes made by another process

#[tokio::test]
async fn a_revocation_by_another_process_applies_after_the_poll() {
    let app = App::new().await;
    let u = app.user().await;
    let second = app.login_as(&u.name, &u.password).await.ok().clone();
    let other = app.user().await;
    let cli = app.other_process().await;
    let n = cli
        .revoke_user(&u.name, latchkey_protocol::Reason::Revoked, now())
        .await
        .unwrap();
    assert_eq!(n, Some(2));
    app.state.refresh_from_store().await.unwrap();
    for at in [u.access(), second["access_token"].as_str().unwrap()] {
        let r = app.session(at).await;
        r.unauthorized();
        assert_eq!(r.body["reason"], "revoked");
    }
    assert_reason(
        &app.refresh(u.refresh()).await.body,
        "invalid_grant",
        "revoked",
    );
    app.session(other.access()).await.ok();
    // Signing in again works.
    app.login_as(&u.name, &u.password).await.ok();
}

#[tokio::test]
async fn a_key_rotation_by_another_process_is_picked_up() {
    let app = App::new().await;
    let u = app.user().await;
    let (_, old_kid) = app.signing_key();
    let cli = app.other_process().await;
    let t = now();
    let key = latchkey_server::keys::generate(t);
    let new_kid = key.kid.clone();
    cli.rotate_key(key, t).await.unwrap();
    app.state.refresh_from_store().await.unwrap();

    let fresh = app.login_as(&u.name, &u.password).await.ok().clone();
    let at = fresh["access_token"].as_str().unwrap();
    assert_eq!(jwt_part(at, 0)["kid"], new_kid.as_str());
    let jwks = app.jwks().await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));
    // Both the old and the new token verify, on the server and offline.
    app.session(u.access()).await.ok();
    app.session(at).await.ok();
    let set = KeySet::from_jwks(&serde_json::from_value(jwks).unwrap()).unwrap();
    set.verify(u.access(), ISSUER, now(), 30).unwrap();
    set.verify(at, ISSUER, now(), 30).unwrap();
    // Refreshes sign with the new key too.
    let t1 = app.refresh(u.refresh()).await.ok().clone();
    assert_eq!(
        jwt_part(t1["access_token"].as_str().unwrap(), 0)["kid"],
        new_kid.as_str()
    );
}

// -------------------------------------------------------------------- sync

fn applied(r: &Value, op_id: &str, note_id: &str, rev: i64) {
    assert_eq!(
        r,
        &json!({"op_id": op_id, "status": "applied", "note_id": note_id, "rev": rev})
    );
}

#[tokio::test]
async fn push_then_pull_round_trips_notes() {
    let app = App::new().await;
    let u = app.user().await;
    let (o1, o2, n1, n2) = (uuid(), uuid(), uuid(), uuid());
    let res = app
        .push_ok(
            u.access(),
            vec![
                upsert(&o1, &n1, 0, "first", "hello"),
                upsert(&o2, &n2, 0, "ünïcødé ✓", "line\nbreak \"quoted\""),
            ],
        )
        .await;
    assert_keys(&res, &["results", "cursor"]);
    applied(&res["results"][0], &o1, &n1, 1);
    applied(&res["results"][1], &o2, &n2, 2);
    assert_eq!(res["cursor"], 2);

    let pulled = app.pull_ok(u.access(), "?since=0").await;
    assert_keys(&pulled, &["changes", "cursor", "more"]);
    assert_eq!(pulled["cursor"], 2);
    assert_eq!(pulled["more"], false);
    let changes = pulled["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    for c in changes {
        assert_change_shape(c);
        assert!((c["updated_at"].as_i64().unwrap() - now()).abs() <= 5);
    }
    assert_eq!(changes[0]["note_id"], n1.as_str());
    assert_eq!(changes[0]["rev"], 1);
    assert_eq!(changes[0]["title"], "first");
    assert_eq!(changes[0]["body"], "hello");
    assert_eq!(changes[0]["deleted"], false);
    assert_eq!(changes[0]["conflict_of"], Value::Null);
    assert_eq!(changes[1]["title"], "ünïcødé ✓");
    assert_eq!(changes[1]["body"], "line\nbreak \"quoted\"");

    // No query at all means since=0; past the end is empty.
    assert_eq!(app.pull_ok(u.access(), "").await, pulled);
    let tail = app.pull_ok(u.access(), "?since=1").await;
    assert_eq!(tail["changes"].as_array().unwrap().len(), 1);
    assert_eq!(tail["changes"][0]["rev"], 2);
    let end = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(end, json!({"changes": [], "cursor": 2, "more": false}));

    // An edit on the current rev applies and gets the next rev.
    let o3 = uuid();
    let res = app
        .push_ok(u.access(), vec![upsert(&o3, &n1, 1, "first v2", "")])
        .await;
    applied(&res["results"][0], &o3, &n1, 3);
    let tail = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(tail["changes"][0]["title"], "first v2");
    assert_eq!(tail["changes"][0]["body"], "");
    // The edited note is no longer at its old rev.
    let all = app.pull_ok(u.access(), "").await;
    let revs: Vec<i64> = all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rev"].as_i64().unwrap())
        .collect();
    assert_eq!(revs, vec![2, 3]);
}

#[tokio::test]
async fn an_empty_push_is_200_with_no_results() {
    let app = App::new().await;
    let u = app.user().await;
    assert_eq!(
        app.push_ok(u.access(), vec![]).await,
        json!({"results": [], "cursor": 0})
    );
    app.push_ok(u.access(), vec![upsert(&uuid(), &uuid(), 0, "a", "b")])
        .await;
    assert_eq!(
        app.push_ok(u.access(), vec![]).await,
        json!({"results": [], "cursor": 1})
    );
}

#[tokio::test]
async fn pushing_the_same_batch_twice_changes_nothing() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "v1", "")])
        .await;
    let batch = vec![
        upsert(&uuid(), &uuid(), 0, "new", "x"),
        upsert(&uuid(), &n, 1, "v2", "y"),
        // stale: conflicts, makes a copy
        upsert(&uuid(), &n, 1, "v2 elsewhere", "z"),
        delete(&uuid(), &uuid(), 0),
    ];
    let first = app.push_ok(u.access(), batch.clone()).await;
    let before = app.pull_ok(u.access(), "").await;
    let second = app.push_ok(u.access(), batch.clone()).await;
    let after = app.pull_ok(u.access(), "").await;
    assert_eq!(before, after, "a retried push changed the data");
    assert_eq!(first["cursor"], second["cursor"]);
    let (a, b) = (
        first["results"].as_array().unwrap(),
        second["results"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(y["status"], "duplicate", "{y}");
        for k in [
            "op_id",
            "note_id",
            "rev",
            "conflict_copy_id",
            "copy_rev",
            "server_note",
        ] {
            assert_eq!(x.get(k), y.get(k), "{k}: {x} vs {y}");
        }
    }
    assert_eq!(a[2]["status"], "conflict");
    // The same op twice in one batch is a duplicate too.
    let op = upsert(&uuid(), &uuid(), 0, "once", "");
    let res = app.push_ok(u.access(), vec![op.clone(), op]).await;
    assert_eq!(res["results"][0]["status"], "applied");
    assert_eq!(res["results"][1]["status"], "duplicate");
    assert_eq!(res["results"][1]["rev"], res["results"][0]["rev"]);
}

#[tokio::test]
async fn a_conflict_keeps_the_server_version_and_makes_a_copy() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(
        u.access(),
        vec![upsert(&uuid(), &n, 0, "Groceries", "milk")],
    )
    .await;
    // Device A edits rev 1 -> rev 2.
    app.push_ok(
        u.access(),
        vec![upsert(&uuid(), &n, 1, "Groceries", "milk, eggs")],
    )
    .await;
    // Device B edited rev 1 too, offline.
    let op = uuid();
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&op, &n, 1, "Groceries", "milk, bread")],
        )
        .await;
    let r = &res["results"][0];
    assert_keys(
        r,
        &[
            "op_id",
            "status",
            "note_id",
            "rev",
            "conflict_copy_id",
            "copy_rev",
            "server_note",
        ],
    );
    assert_eq!(r["op_id"], op.as_str());
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["note_id"], n.as_str());
    assert_eq!(r["rev"], 2);
    assert_eq!(r["copy_rev"], 3);
    assert_eq!(res["cursor"], 3);
    let sn = &r["server_note"];
    assert_change_shape(sn);
    assert_eq!(sn["note_id"], n.as_str());
    assert_eq!(sn["rev"], 2);
    assert_eq!(sn["title"], "Groceries");
    assert_eq!(sn["body"], "milk, eggs");
    assert_eq!(sn["deleted"], false);
    let copy_id = r["conflict_copy_id"].as_str().unwrap();
    uuid::Uuid::parse_str(copy_id).unwrap();
    assert_ne!(copy_id, n);
    assert_eq!(copy_id, copy_id.to_lowercase());

    let pulled = app.pull_ok(u.access(), "?since=2").await;
    let changes = pulled["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1);
    let copy = &changes[0];
    assert_eq!(copy["note_id"], copy_id);
    assert_eq!(copy["rev"], 3);
    assert_eq!(copy["title"], "Groceries (conflict copy)");
    assert_eq!(copy["body"], "milk, bread");
    assert_eq!(copy["deleted"], false);
    assert_eq!(copy["conflict_of"], n.as_str());
    // The original stays as the server had it.
    let all = app.pull_ok(u.access(), "").await;
    let orig = all["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["note_id"] == n.as_str())
        .unwrap()
        .clone();
    assert_eq!(orig["body"], "milk, eggs");
    assert_eq!(orig["rev"], 2);
    assert_eq!(orig["conflict_of"], Value::Null);
}

#[tokio::test]
async fn a_base_from_the_future_conflicts_without_losing_anything() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "t", "b")])
        .await;
    let res = app
        .push_ok(u.access(), vec![upsert(&uuid(), &n, 9, "t", "mine")])
        .await;
    let r = &res["results"][0];
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["server_note"]["rev"], 1);
    assert_eq!(r["server_note"]["body"], "b");
    // A note the server never had, with a base rev: a conflict too.
    let ghost = uuid();
    let res = app
        .push_ok(u.access(), vec![upsert(&uuid(), &ghost, 5, "g", "kept")])
        .await;
    let r = &res["results"][0];
    assert_eq!(r["status"], "conflict");
    let copy = r["conflict_copy_id"].as_str().unwrap().to_string();
    let all = app.pull_ok(u.access(), "").await;
    assert!(
        all["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["note_id"] == copy.as_str() && c["body"] == "kept")
    );
}

#[tokio::test]
async fn a_delete_that_conflicts_with_an_edit_loses() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "keep me", "v1")])
        .await;
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 1, "keep me", "v2")])
        .await;
    let op = uuid();
    let res = app.push_ok(u.access(), vec![delete(&op, &n, 1)]).await;
    let r = &res["results"][0];
    assert_keys(r, &["op_id", "status", "note_id", "rev", "server_note"]);
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["rev"], 2);
    assert_eq!(r["server_note"]["body"], "v2");
    assert_eq!(r["server_note"]["deleted"], false);
    assert_eq!(res["cursor"], 2, "a losing delete wrote something");
    let all = app.pull_ok(u.access(), "").await;
    let changes = all["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{all}");
    assert_eq!(changes[0]["deleted"], false);
    assert_eq!(changes[0]["body"], "v2");
}

#[tokio::test]
async fn deletes_leave_tombstones_and_an_upsert_on_one_brings_the_note_back() {
    let app = App::new().await;
    let u = app.user().await;
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, "secret", "text")])
        .await;
    let op = uuid();
    let res = app.push_ok(u.access(), vec![delete(&op, &n, 1)]).await;
    applied(&res["results"][0], &op, &n, 2);
    let pulled = app.pull_ok(u.access(), "?since=1").await;
    let t = &pulled["changes"][0];
    assert_change_shape(t);
    assert_eq!(t["note_id"], n.as_str());
    assert_eq!(t["rev"], 2);
    assert_eq!(t["deleted"], true);
    assert_eq!(t["title"], "");
    assert_eq!(t["body"], "");
    // Everything since 0 shows the tombstone only, not the old content.
    let all = app.pull_ok(u.access(), "").await;
    assert_eq!(all["changes"].as_array().unwrap().len(), 1);
    assert!(!all.to_string().contains("secret"));

    let op = uuid();
    let res = app
        .push_ok(u.access(), vec![upsert(&op, &n, 2, "back", "again")])
        .await;
    applied(&res["results"][0], &op, &n, 3);
    let back = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(back["changes"][0]["deleted"], false);
    assert_eq!(back["changes"][0]["title"], "back");
    assert_eq!(back["changes"][0]["body"], "again");

    // An upsert on a stale base of a deleted note is a conflict, with a copy.
    app.push_ok(u.access(), vec![delete(&uuid(), &n, 3)]).await;
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&uuid(), &n, 3, "edited offline", "x")],
        )
        .await;
    let r = &res["results"][0];
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["server_note"]["deleted"], true);
    assert!(r["conflict_copy_id"].is_string());
}

#[tokio::test]
async fn uuids_are_accepted_in_any_case_and_answered_in_lowercase() {
    let app = App::new().await;
    let u = app.user().await;
    let (op, n) = (uuid(), uuid());
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&op.to_uppercase(), &n.to_uppercase(), 0, "t", "b")],
        )
        .await;
    applied(&res["results"][0], &op, &n, 1);
    let pulled = app.pull_ok(u.access(), "").await;
    assert_eq!(pulled["changes"][0]["note_id"], n.as_str());
    // It is the same op, and the same note, whatever the case.
    let res = app
        .push_ok(u.access(), vec![upsert(&op, &n, 0, "t", "b")])
        .await;
    assert_eq!(res["results"][0]["status"], "duplicate");
    let op2 = uuid();
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&op2.to_uppercase(), &n, 1, "t2", "")],
        )
        .await;
    applied(&res["results"][0], &op2, &n, 2);
    // A conflict answers in lowercase too.
    let op3 = uuid();
    let res = app
        .push_ok(
            u.access(),
            vec![upsert(&op3.to_uppercase(), &n.to_uppercase(), 1, "t3", "")],
        )
        .await;
    let r = &res["results"][0];
    assert_eq!(r["op_id"], op3.as_str());
    assert_eq!(r["note_id"], n.as_str());
    assert_eq!(r["server_note"]["note_id"], n.as_str());
    let copy = r["conflict_copy_id"].as_str().unwrap();
    assert_eq!(copy, copy.to_lowercase());
    let pulled = app.pull_ok(u.access(), "?since=2").await;
    assert_eq!(pulled["changes"][0]["conflict_of"], n.as_str());
}

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

#[tokio::test]
async fn users_never_see_or_touch_each_others_notes() {
    let app = App::new().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let n = uuid();
    let op = uuid();
    // Both write the SAME note id, even with the same op id.
    let a = app
        .push_ok(alice.access(), vec![upsert(&op, &n, 0, "alice's", "A")])
        .await;
    let b = app
        .push_ok(bob.access(), vec![upsert(&op, &n, 0, "bob's", "B")])
        .await;
    applied(&a["results"][0], &op, &n, 1);
    applied(&b["results"][0], &op, &n, 1);
    // Each sees only their own.
    let pa = app.pull_ok(alice.access(), "").await;
    let pb = app.pull_ok(bob.access(), "").await;
    assert_eq!(pa["changes"].as_array().unwrap().len(), 1);
    assert_eq!(pa["changes"][0]["title"], "alice's");
    assert_eq!(pb["changes"].as_array().unwrap().len(), 1);
    assert_eq!(pb["changes"][0]["title"], "bob's");
    // Bob edits and deletes "the" note: only his changes.
    app.push_ok(bob.access(), vec![upsert(&uuid(), &n, 1, "bob v2", "")])
        .await;
    app.push_ok(bob.access(), vec![delete(&uuid(), &n, 2)])
        .await;
    let pa2 = app.pull_ok(alice.access(), "").await;
    assert_eq!(pa2, pa, "bob's writes changed alice's view");
    // Bob cannot detect alice's other notes: a note only alice has looks,
    // to bob, exactly like a note nobody has.
    let only_alice = uuid();
    app.push_ok(
        alice.access(),
        vec![upsert(&uuid(), &only_alice, 0, "private", "diary")],
    )
    .await;
    let probe = |id: &str| vec![upsert(&uuid(), id, 1, "probe", ""), delete(&uuid(), id, 1)];
    let nobody = uuid();
    let r1 = app.push_ok(bob.access(), probe(&only_alice)).await;
    let r2 = app.push_ok(bob.access(), probe(&nobody)).await;
    for (x, y) in r1["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r2["results"].as_array().unwrap())
    {
        assert_eq!(x["status"], y["status"]);
        assert_eq!(x["rev"], y["rev"]);
        assert_eq!(
            x["server_note"]["title"], y["server_note"]["title"],
            "{x} vs {y}"
        );
        assert_eq!(x["server_note"]["deleted"], y["server_note"]["deleted"]);
    }
    assert!(!r1.to_string().contains("private"));
    assert!(!r1.to_string().contains("diary"));
    let pa3 = app.pull_ok(alice.access(), "").await;
    let changes = pa3["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c["title"] != "probe"));
    let pb3 = app.pull_ok(bob.access(), "").await;
    assert!(!pb3.to_string().contains("alice"));
    assert!(!pb3.to_string().contains("diary"));
    // Revs are one sequence per user.
    assert_eq!(pa3["cursor"], 2);
}

#[tokio::test]
async fn one_malformed_op_rejects_the_whole_push() {
    let app = App::new().await;
    let u = app.user().await;
    let good = || upsert(&uuid(), &uuid(), 0, "good", "fine");
    let mut bad_ops: Vec<(&str, Value)> = vec![
        (
            "note id not a uuid",
            upsert(&uuid(), "not-a-uuid", 0, "t", ""),
        ),
        ("op id not a uuid", upsert("12345", &uuid(), 0, "t", "")),
        ("op id a number", {
            let mut o = good();
            o["op_id"] = json!(12345);
            o
        }),
        (
            "uuid with junk",
            upsert(&format!("{}x", uuid()), &uuid(), 0, "t", ""),
        ),
        ("empty uuid", upsert(&uuid(), "", 0, "t", "")),
        ("negative base_rev", upsert(&uuid(), &uuid(), -1, "t", "")),
        ("negative base_rev on delete", delete(&uuid(), &uuid(), -7)),
        ("unknown action", {
            let mut o = good();
            o["action"] = json!("rename");
            o
        }),
        ("action in capitals", {
            let mut o = good();
            o["action"] = json!("UPSERT");
            o
        }),
        ("action missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("action");
            o
        }),
        ("action null", {
            let mut o = good();
            o["action"] = json!(null);
            o
        }),
        ("base_rev as text", {
            let mut o = good();
            o["base_rev"] = json!("0");
            o
        }),
        ("base_rev fractional", {
            let mut o = good();
            o["base_rev"] = json!(1.5);
            o
        }),
        ("base_rev too big", {
            let mut o = good();
            o["base_rev"] = json!(u64::MAX);
            o
        }),
        ("base_rev missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("base_rev");
            o
        }),
        ("title missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("title");
            o
        }),
        ("body missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("body");
            o
        }),
        ("title a number", {
            let mut o = good();
            o["title"] = json!(5);
            o
        }),
        ("body null", {
            let mut o = good();
            o["body"] = json!(null);
            o
        }),
        ("client_time missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("client_time");
            o
        }),
        ("client_time as text", {
            let mut o = good();
            o["client_time"] = json!("now");
            o
        }),
        ("note_id missing", {
            let mut o = good();
            o.as_object_mut().unwrap().remove("note_id");
            o
        }),
        ("op not an object", json!("upsert")),
        ("op null", json!(null)),
        (
            "title over 4 KiB",
            upsert(&uuid(), &uuid(), 0, &"t".repeat(4097), ""),
        ),
        (
            // 2049 characters but 4098 bytes of UTF-8
            "title over 4 KiB of UTF-8",
            upsert(&uuid(), &uuid(), 0, &"é".repeat(2049), ""),
        ),
        (
            "body over 4 MiB",
            upsert(&uuid(), &uuid(), 0, "t", &"b".repeat(4 * 1024 * 1024 + 1)),
        ),
    ];
    // Positions: first, middle, last.
    for (i, (label, bad)) in bad_ops.drain(..).enumerate() {
        let mut batch = vec![good(), good()];
        batch.insert(i % 3, bad);
        let r = app.push(u.access(), &ops(batch)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{label}: {}", r.body);
        assert_error(&r.body, "invalid_request");
    }
    // Nothing of any of those was applied.
    assert_eq!(
        app.pull_ok(u.access(), "").await,
        json!({"changes": [], "cursor": 0, "more": false})
    );
    // The limits themselves are fine.
    app.push_ok(
        u.access(),
        vec![
            upsert(&uuid(), &uuid(), 0, &"t".repeat(4096), ""),
            upsert(&uuid(), &uuid(), 0, &"é".repeat(2048), ""),
            upsert(&uuid(), &uuid(), 0, "", &"b".repeat(4 * 1024 * 1024)),
        ],
    )
    .await;
}

#[tokio::test]
async fn malformed_push_bodies_are_400() {
    let app = App::new().await;
    let u = app.user().await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        br#"{"ops":["#.to_vec(),
        b"not json".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        br#"{"ops":null}"#.to_vec(),
        br#"{"ops":{}}"#.to_vec(),
        br#"{"ops":"all"}"#.to_vec(),
        br#"{"ops":[]} trailing"#.to_vec(),
        b"\xff\xfe\x00\x01binary".to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!(r#"{{"ops":{}{}}}"#, "[".repeat(5000), "]".repeat(5000)).into_bytes(),
    ];
    for body in bodies {
        let r = app
            .call(request(
                Method::POST,
                "/v1/sync/push",
                Some(JSON),
                Body::from(body.clone()),
                Some(u.access()),
            ))
            .await;
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{shown}: {}", r.body);
        assert_error(&r.body, "invalid_request");
    }
    // More than 1000 ops.
    let batch: Vec<Value> = (0..1001)
        .map(|_| upsert(&uuid(), &uuid(), 0, "t", ""))
        .collect();
    app.push(u.access(), &ops(batch))
        .await
        .err(400, "invalid_request");
    assert_eq!(app.pull_ok(u.access(), "").await["cursor"], 0);
}

#[tokio::test]
async fn push_wants_json() {
    let app = App::new().await;
    let u = app.user().await;
    let body = ops(vec![upsert(&uuid(), &uuid(), 0, "t", "")]).to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some(FORM),
        Some("application/jsonx"),
    ] {
        app.call(request(
            Method::POST,
            "/v1/sync/push",
            ct,
            Body::from(body.clone()),
            Some(u.access()),
        ))
        .await
        .err(415, "invalid_request");
    }
    app.call(request(
        Method::POST,
        "/v1/sync/push",
        Some("application/json; charset=utf-8"),
        Body::from(body),
        Some(u.access()),
    ))
    .await
    .ok();
}

#[tokio::test]
async fn a_push_over_8_mib_is_413() {
    let app = App::new().await;
    let u = app.user().await;
    // Three bodies of 3 MiB: each op is fine, the request is not.
    let big = "b".repeat(3 * 1024 * 1024);
    let body = ops((0..3)
        .map(|_| upsert(&uuid(), &uuid(), 0, "t", &big))
        .collect())
    .to_string();
    assert!(body.len() > 8 * 1024 * 1024);
    // Without a Content-Length (streamed) and with one.
    app.call(request(
        Method::POST,
        "/v1/sync/push",
        Some(JSON),
        Body::from(body.clone()),
        Some(u.access()),
    ))
    .await
    .err(413, "request_too_large");
    let mut req = request(
        Method::POST,
        "/v1/sync/push",
        Some(JSON),
        Body::from(body.clone()),
        Some(u.access()),
    );
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, body.len().into());
    app.call(req).await.err(413, "request_too_large");
    assert_eq!(app.pull_ok(u.access(), "").await["cursor"], 0);
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

#[tokio::test]
async fn a_fresh_sign_in_by_a_username_with_odd_characters_works() {
    let app = App::new().await;
    let name = format!("ünï-{}", unique("ç@+&=%"));
    let pw = "p@ss w0rd&=+%ü".to_string();
    let p = pw.clone();
    let hash =
        tokio::task::spawn_blocking(move || latchkey_server::auth::hash_password_blocking(&p))
            .await
            .unwrap()
            .unwrap();
    app.state
        .store
        .create_user(&name, &hash, now())
        .await
        .unwrap();
    let t = app.login_as(&name, &pw).await.ok().clone();
    assert_eq!(t["user"]["username"], name.as_str());
    assert_eq!(
        jwt_part(t["access_token"].as_str().unwrap(), 1)["name"],
        name.as_str()
    );
}

// ------------------------------------------------------------- concurrency

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

#[tokio::test]
async fn ops_of_one_batch_apply_in_order() {
    let app = App::new().await;
    let u = app.user().await;
    let (n, m) = (uuid(), uuid());
    let res = app
        .push_ok(
            u.access(),
            vec![
                upsert(&uuid(), &n, 0, "v1", ""),
                upsert(&uuid(), &n, 1, "v2", ""),
                upsert(&uuid(), &m, 0, "other", ""),
                delete(&uuid(), &n, 2),
                upsert(&uuid(), &n, 4, "v3", "back"),
            ],
        )
        .await;
    let statuses: Vec<(&str, i64)> = res["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_str().unwrap(), r["rev"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("applied", 1),
            ("applied", 2),
            ("applied", 3),
            ("applied", 4),
            ("applied", 5)
        ]
    );
    assert_eq!(res["cursor"], 5);
    let all = app.pull_ok(u.access(), "").await;
    let changes = all["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1]["note_id"], n.as_str());
    assert_eq!(changes[1]["title"], "v3");
    assert_eq!(changes[1]["deleted"], false);
}

/// Runs SQL on the app's database, as an operator (or the clock) would.
fn sql(app: &App, statement: &str, params: impl rusqlite::Params) {
    let conn = rusqlite::Connection::open(&app.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute(statement, params).unwrap();
}

fn sha256(s: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes()).to_vec()
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
        [sha256(u.refresh())],
    );
    let r = app.refresh(u.refresh()).await;
    assert_reason(&r.body, "invalid_grant", "reused");
    app.session(u.access()).await.unauthorized();
}

#[tokio::test]
async fn the_refresh_tokens_are_stored_only_as_hashes() {
    let app = App::new().await;
    let u = app.user().await;
    let conn = rusqlite::Connection::open(&app.db).unwrap();
    let hashes: Vec<Vec<u8>> = conn
        .prepare("SELECT hash FROM refresh_tokens")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(hashes, vec![sha256(u.refresh())]);
    let stored: String = conn
        .query_row(
            "SELECT password_hash FROM users WHERE username = ?1",
            [&u.name],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
}

#[tokio::test]
async fn retired_keys_leave_the_jwks_once_no_token_of_theirs_can_be_valid() {
    let app = App::new().await;
    let u = app.user().await;
    let (_, first) = app.signing_key();
    let cli = app.other_process().await;
    let t = now();
    cli.rotate_key(latchkey_server::keys::generate(t), t)
        .await
        .unwrap();
    let (_, second) = app.signing_key();
    assert_eq!(second, first, "not reloaded yet");
    // The first key was retired long ago (more than 15 min + 60 s).
    sql(
        &app,
        "UPDATE signing_keys SET retired_at = retired_at - 2000 WHERE kid = ?1",
        [&first],
    );
    let t = now();
    cli.rotate_key(latchkey_server::keys::generate(t), t)
        .await
        .unwrap();
    app.state.refresh_from_store().await.unwrap();
    let jwks = app.jwks().await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    // The current key and the one retired just now; not the old one.
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(!kids.contains(&first.as_str()));
    let (_, current) = app.signing_key();
    assert!(kids.contains(&current.as_str()));
    let r = app.session(u.access()).await;
    r.unauthorized();
}

// --------------------------------------------------------- v1.1 sync edges

/// PROTOCOL.md v1.1: a push answer carries `server_note`s only until their
/// JSON would pass 8 MiB; that one and every later one are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_answer_leaves_out_server_notes_past_8_mib() {
    let app = App::new().await;
    let u = app.user().await;
    let body = |c: char| c.to_string().repeat(3 * 1024 * 1024);
    let notes: Vec<String> = (0..3).map(|_| uuid()).collect();
    for (n, c) in notes.iter().zip(['a', 'b', 'c']) {
        app.push_ok(u.access(), vec![upsert(&uuid(), n, 0, "big", &body(c))])
            .await;
    }
    // Another device edits all three offline from nothing: three conflicts.
    let batch: Vec<Value> = notes
        .iter()
        .map(|n| upsert(&uuid(), n, 0, "mine", "small"))
        .collect();
    for attempt in ["first", "retried"] {
        let r = app.push(u.access(), &ops(batch.clone())).await;
        let res = r.ok();
        assert!(
            r.raw.len() < 7 * 1024 * 1024,
            "{attempt}: {} bytes",
            r.raw.len()
        );
        let results = res["results"].as_array().unwrap();
        for (i, result) in results.iter().enumerate() {
            let status = if attempt == "first" {
                "conflict"
            } else {
                "duplicate"
            };
            assert_eq!(result["status"], status, "{attempt} {i}");
            assert!(result["conflict_copy_id"].is_string(), "{attempt} {i}");
        }
        assert_eq!(results[0]["server_note"]["body"], body('a'), "{attempt}");
        assert_eq!(results[1]["server_note"]["body"], body('b'), "{attempt}");
        // The third would take the total past 8 MiB: the key is absent.
        assert!(
            results[2].as_object().unwrap().get("server_note").is_none(),
            "{attempt}"
        );
    }
    // The note the answer left out is intact, and a pull brings it.
    let mut since = 0;
    let mut third = None;
    loop {
        let page = app.pull_ok(u.access(), &format!("?since={since}")).await;
        for c in page["changes"].as_array().unwrap() {
            if c["note_id"] == notes[2].as_str() {
                third = Some(c.clone());
            }
        }
        since = page["cursor"].as_i64().unwrap();
        if page["more"] == false {
            break;
        }
    }
    let third = third.expect("the third note is pulled");
    assert_eq!(third["body"], body('c'));
    assert_eq!(third["title"], "big");
    assert_eq!(third["rev"], 3);
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

/// PROTOCOL.md v1.1: a conflict copy of a note with a 4 KiB title has a
/// title that still fits 4 KiB, so the copy can be edited and pushed.
#[tokio::test]
async fn a_conflict_copy_of_a_4_kib_title_fits_and_can_be_pushed_again() {
    let app = App::new().await;
    let u = app.user().await;
    // 4,096 bytes, with 3-byte characters across the 4,080-byte cut.
    let title = format!("a{}", "€".repeat(1365));
    assert_eq!(title.len(), 4096);
    let n = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 0, &title, "one")])
        .await;
    app.push_ok(u.access(), vec![upsert(&uuid(), &n, 1, &title, "two")])
        .await;
    let res = app
        .push_ok(u.access(), vec![upsert(&uuid(), &n, 1, &title, "three")])
        .await;
    let r = &res["results"][0];
    assert_eq!(r["status"], "conflict");
    let copy_id = r["conflict_copy_id"].as_str().unwrap();
    let copy_rev = r["copy_rev"].as_i64().unwrap();
    let pulled = app.pull_ok(u.access(), "?since=2").await;
    let copy = &pulled["changes"][0];
    assert_eq!(copy["note_id"], copy_id);
    let copy_title = copy["title"].as_str().unwrap();
    assert!(copy_title.len() <= 4096, "{} bytes", copy_title.len());
    assert!(copy_title.ends_with(" (conflict copy)"));
    assert_eq!(copy_title, format!("a{} (conflict copy)", "€".repeat(1359)));
    // Edited and pushed again as it is.
    let again = app
        .push_ok(
            u.access(),
            vec![upsert(
                &uuid(),
                copy_id,
                copy_rev,
                copy_title,
                "three, edited",
            )],
        )
        .await;
    assert_eq!(again["results"][0]["status"], "applied");
}

/// The op results are pruned once older than the refresh-token lifetime.
/// A resend of a pruned op id is a new op: its base rev no longer matches,
/// so it conflicts, and its text lands in a conflict copy. Nothing is lost,
/// not even an edit made to the copy its first sending made.
#[tokio::test]
async fn a_resent_op_whose_result_was_pruned_conflicts_and_keeps_its_text() {
    let app = App::new().await;
    let u = app.user().await;
    let (created, n) = (uuid(), uuid());
    let create = upsert(&created, &n, 0, "Plan", "the text");
    app.push_ok(u.access(), vec![create.clone()]).await;
    // A conflict whose copy the user then edits.
    let stale = upsert(&uuid(), &n, 0, "Plan", "other text");
    let first = app.push_ok(u.access(), vec![stale.clone()]).await;
    let copy_id = first["results"][0]["conflict_copy_id"]
        .as_str()
        .unwrap()
        .to_string();
    let copy_rev = first["results"][0]["copy_rev"].as_i64().unwrap();
    app.push_ok(
        u.access(),
        vec![upsert(&uuid(), &copy_id, copy_rev, "Mine", "edited copy")],
    )
    .await;
    // A delete, applied.
    let gone = uuid();
    app.push_ok(u.access(), vec![upsert(&uuid(), &gone, 0, "x", "y")])
        .await;
    let delete_op = delete(&uuid(), &gone, 4);
    assert_eq!(
        app.push_ok(u.access(), vec![delete_op.clone()]).await["results"][0]["status"],
        "applied"
    );
    // A recent op that must survive the prune.
    let recent = upsert(&uuid(), &uuid(), 0, "recent", "r");
    app.push_ok(u.access(), vec![recent.clone()]).await;

    // 31 days pass for all but the recent op.
    let month = 31 * 24 * 3600;
    let recent_id = recent["op_id"].as_str().unwrap();
    sql(
        &app,
        "UPDATE ops SET created_at = created_at - ?1 WHERE op_id != ?2",
        rusqlite::params![month, recent_id],
    );
    assert_eq!(app.state.prune_ops(now()).await.unwrap(), 5);
    assert_eq!(app.state.prune_ops(now()).await.unwrap(), 0);
    let again = app.push_ok(u.access(), vec![recent]).await;
    assert_eq!(again["results"][0]["status"], "duplicate");

    let res = app
        .push_ok(u.access(), vec![create, stale, delete_op])
        .await;
    let [c, s, d] = [0, 1, 2].map(|i| res["results"][i].clone());
    // The creation: a conflict, the server's note intact, a copy of the text.
    assert_eq!(c["status"], "conflict");
    assert_eq!(c["server_note"]["body"], "the text");
    let c_copy = c["conflict_copy_id"].as_str().unwrap();
    // The old conflict: a new copy, not the edited one overwritten.
    assert_eq!(s["status"], "conflict");
    let s_copy = s["conflict_copy_id"].as_str().unwrap();
    assert_ne!(s_copy, copy_id);
    // The delete: a conflict with no copy; the tombstone stays.
    assert_eq!(d["status"], "conflict");
    assert!(d.get("conflict_copy_id").is_none(), "{d}");
    let all = app.pull_ok(u.access(), "").await;
    let note = |id: &str| {
        all["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["note_id"] == id)
            .unwrap_or_else(|| panic!("{id} not pulled"))
            .clone()
    };
    assert_eq!(note(&n)["body"], "the text");
    assert_eq!(note(c_copy)["body"], "the text");
    assert_eq!(note(c_copy)["title"], "Plan (conflict copy)");
    assert_eq!(note(s_copy)["body"], "other text");
    assert_eq!(note(&copy_id)["body"], "edited copy");
    assert_eq!(note(&copy_id)["title"], "Mine");
    assert_eq!(note(&gone)["deleted"], true);
}

// ------------------------------------------------- v1.1 sign-in throttling

fn sign_in_request(name: &str, pw: &str) -> Request<Body> {
    request(
        Method::POST,
        "/v1/auth/token",
        Some(FORM),
        Body::from(format!(
            "grant_type=password&username={}&password={}",
            enc(name),
            enc(pw)
        )),
        None,
    )
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
