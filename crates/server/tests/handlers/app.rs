//! The harness every handler test uses: an [`App`] (the whole `Router` over
//! a state on a temporary SQLite database) whose answers are the kit's
//! [`Resp`], checked on the way; signed-in users, and request builders.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use clap::Parser as _;
use ed25519_dalek::SigningKey;
use http_body_util::BodyExt as _;
use latchkey_server::auth::password::hash_password;
use latchkey_server::cli::Command;
use latchkey_server::state::AppState;
use latchkey_server::{Cli, build_state};
use serde_json::Value;
use tower::ServiceExt as _;

use latchkey_testkit::*;

pub const ISSUER: &str = "http://latchkey.test:8787";
pub const FORM: &str = "application/x-www-form-urlencoded";
pub const JSON: &str = "application/json";

/// A router over a fresh database, and handles to its state.
pub struct App {
    pub router: Router,
    pub state: AppState,
    pub db: PathBuf,
    _dir: tempfile::TempDir,
}

/// A signed-in user.
pub struct User {
    pub name: String,
    pub password: String,
    pub token: Value,
}

impl User {
    pub fn access(&self) -> &str {
        self.token["access_token"].as_str().unwrap()
    }
    pub fn refresh(&self) -> &str {
        self.token["refresh_token"].as_str().unwrap()
    }
    pub fn id(&self) -> &str {
        self.token["user"]["id"].as_str().unwrap()
    }
    pub fn sid(&self) -> &str {
        self.token["session_id"].as_str().unwrap()
    }
}

impl App {
    pub async fn new() -> Self {
        Self::with(&[]).await
    }

    /// An app started with extra `serve` flags.
    pub async fn with(extra: &[&str]) -> Self {
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

    pub async fn call(&self, req: Request<Body>) -> Resp {
        self.call_from(IpAddr::V4(Ipv4Addr::LOCALHOST), req).await
    }

    /// Sends `req` as if from `ip`, and checks the answer's invariants.
    pub async fn call_from(&self, ip: IpAddr, mut req: Request<Body>) -> Resp {
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
            !status.is_server_error() || busy,
            "{what}: {status} {}",
            String::from_utf8_lossy(&raw)
        );
        Resp::new(&what, status, parts.headers, raw.to_vec())
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(request(Method::GET, path, None, Body::empty(), token))
            .await
    }

    pub async fn form(&self, path: &str, form: &str, token: Option<&str>) -> Resp {
        self.call(request(
            Method::POST,
            path,
            Some(FORM),
            Body::from(form.to_owned()),
            token,
        ))
        .await
    }

    pub async fn push(&self, token: &str, body: &Value) -> Resp {
        self.call(request(
            Method::POST,
            "/v1/sync/push",
            Some(JSON),
            Body::from(serde_json::to_vec(body).unwrap()),
            Some(token),
        ))
        .await
    }

    pub async fn push_ok(&self, token: &str, list: Vec<Value>) -> Value {
        self.push(token, &ops(list)).await.ok().clone()
    }

    pub async fn pull(&self, token: &str, query: &str) -> Resp {
        self.get(&format!("/v1/sync/pull{query}"), Some(token))
            .await
    }

    pub async fn pull_ok(&self, token: &str, query: &str) -> Value {
        self.pull(token, query).await.ok().clone()
    }

    /// Creates a user directly in the store.
    pub async fn add_user(&self) -> (String, String) {
        let name = unique("user");
        let pw = password();
        self.add_user_named(&name, &pw).await;
        (name, pw)
    }

    /// Creates the user `name` with password `pw` directly in the store.
    pub async fn add_user_named(&self, name: &str, pw: &str) {
        let hash = hash_password(pw.to_owned()).await.unwrap();
        self.state
            .store
            .create_user(name, &hash, now())
            .await
            .unwrap();
    }

    pub async fn login_as(&self, name: &str, pw: &str) -> Resp {
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
    pub async fn user(&self) -> User {
        let (name, password) = self.add_user().await;
        let token = self.login_as(&name, &password).await.ok().clone();
        User {
            name,
            password,
            token,
        }
    }

    pub async fn refresh(&self, refresh_token: &str) -> Resp {
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

    pub async fn session(&self, access: &str) -> Resp {
        self.get("/v1/auth/session", Some(access)).await
    }

    /// The server's current signing key and its kid.
    pub fn signing_key(&self) -> (SigningKey, String) {
        let view = self.state.keys.current();
        (view.signing.clone(), view.kid.clone())
    }

    pub async fn jwks(&self) -> Value {
        self.get("/.well-known/jwks.json", None).await.ok().clone()
    }

    /// A second handle on the same database, as another process would have.
    pub async fn other_process(&self) -> latchkey_server::store::SqliteStore {
        latchkey_server::store::open(&self.db).await.unwrap()
    }
}

pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn request(
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

pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 9, 8, last))
}

/// Runs SQL on the app's database, as an operator (or the clock) would.
pub fn sql(app: &App, statement: &str, params: impl rusqlite::Params) {
    let conn = rusqlite::Connection::open(&app.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute(statement, params).unwrap();
}

pub fn sha256(s: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes()).to_vec()
}
