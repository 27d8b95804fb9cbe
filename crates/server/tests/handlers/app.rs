//! The harness every handler test uses: an [`App`] (the whole `Router` over
//! a state on a fresh database of the store `LATCHKEY_TEST_STORE` names,
//! SQLite by default) whose answers are the kit's [`Resp`], checked on the
//! way; signed-in users, request builders, [`Events`], a live-updates
//! stream read as it comes, and [`sql`] on the app's database.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use clap::Parser as _;
use ed25519_dalek::SigningKey;
use http_body_util::BodyExt as _;
use latchkey_server::auth::password::hash_password;
use latchkey_server::cli::Command;
use latchkey_server::state::AppState;
use latchkey_server::store::{Location, Store};
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
    /// The database, as `--db` takes it: a file or a URL.
    pub db: String,
    /// The database, if this app made it.
    _db: Option<TestDb>,
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
        let db = TestDb::new("s.db");
        let mut app = Self::serve(db.arg().to_owned(), extra).await;
        app._db = Some(db);
        app
    }

    /// Another instance on the database `db` (which must outlive it).
    pub async fn on_database(db: &str) -> Self {
        Self::serve(db.to_owned(), &[]).await
    }

    async fn serve(db: String, extra: &[&str]) -> Self {
        let mut argv = vec!["latchkey-server", "serve", "--db", &db];
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
            _db: None,
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

    /// Logout with a refresh token (RFC 7009); must be answered 200.
    pub async fn logout(&self, refresh_token: &str) {
        self.form(
            "/v1/auth/revoke",
            &format!("token={}", enc(refresh_token)),
            None,
        )
        .await
        .ok();
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
    pub async fn other_process(&self) -> Arc<dyn Store> {
        let at = Location::parse(self.db.clone().into());
        latchkey_server::store::open(&at).await.unwrap()
    }

    /// Runs the server's background upkeep (the 250 ms poll of what other
    /// processes did) until the returned sender is dropped or sends true.
    pub fn upkeep(&self) -> tokio::sync::watch::Sender<bool> {
        let (stop, rx) = tokio::sync::watch::channel(false);
        latchkey_server::upkeep::spawn(self.state.clone(), rx);
        stop
    }

    /// Opens `GET /v1/sync/events` with `token`; it must be answered 200
    /// with an event stream.
    pub async fn events(&self, token: &str) -> Events {
        let mut req = request(Method::GET, EVENTS_PATH, None, Body::empty(), Some(token));
        req.extensions_mut().insert(ConnectInfo(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            40000,
        )));
        let res = self.router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let ct = res.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert_eq!(ct, "text/event-stream");
        Events::new(Source::Router(res.into_body()))
    }

    /// Pushes one upsert of a new note; returns the user's new cursor.
    pub async fn push_new_note(&self, token: &str) -> i64 {
        let res = self
            .push_ok(token, vec![upsert(&uuid(), &uuid(), 0, "t", "b")])
            .await;
        res["cursor"].as_i64().unwrap()
    }
}

pub use latchkey_protocol::sync::EVENTS_PATH;

/// What a live-updates stream said next.
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    /// `event: <name>` with its `data:` as JSON.
    Event(String, Value),
    /// A comment line (`: <text>`).
    Comment(String),
    /// The stream ended.
    End,
    /// Nothing within the time given.
    Nothing,
}

/// Where an [`Events`] reads from: the router in process, or a server over
/// TCP.
pub enum Source {
    Router(Body),
    Http(reqwest::Response),
}

impl Source {
    async fn chunk(&mut self) -> Option<Bytes> {
        match self {
            Source::Router(body) => loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Some(data);
                        }
                    }
                    _ => return None,
                }
            },
            Source::Http(res) => res.chunk().await.ok().flatten(),
        }
    }
}

/// A live-updates stream, read as it comes.
pub struct Events {
    source: Source,
    buf: String,
    ended: bool,
    /// Everything read so far, as sent.
    pub wire: String,
}

impl Events {
    pub fn new(source: Source) -> Self {
        Self {
            source,
            buf: String::new(),
            ended: false,
            wire: String::new(),
        }
    }

    /// The next event or comment, waiting at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> Said {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..at + 2).collect();
                return parse_block(&block);
            }
            if self.ended {
                assert!(
                    self.buf.is_empty(),
                    "the stream ended mid-event: {:?}",
                    self.buf
                );
                return Said::End;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.source.chunk()).await {
                Err(_) => return Said::Nothing,
                Ok(None) => self.ended = true,
                Ok(Some(bytes)) => {
                    let text = std::str::from_utf8(&bytes).unwrap();
                    self.buf.push_str(text);
                    self.wire.push_str(text);
                }
            }
        }
    }

    /// The next thing said that is not a ping, within `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> Said {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Said::Comment(_) => continue,
                other => return other,
            }
        }
    }

    /// Asserts that the next event is `changed` with this cursor.
    pub async fn expect_changed(&mut self, cursor: i64) {
        let said = self.next_event(Duration::from_secs(10)).await;
        assert_eq!(
            said,
            Said::Event("changed".into(), serde_json::json!({ "cursor": cursor })),
            "wire so far: {:?}",
            self.wire
        );
    }
}

/// One event block of the stream (its lines, without the blank line).
fn parse_block(block: &str) -> Said {
    let mut name = None;
    let mut data = None;
    for line in block.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            return Said::Comment(comment.trim_start().to_owned());
        } else if let Some(v) = line.strip_prefix("event: ") {
            name = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(v).unwrap());
        } else {
            panic!("unexpected line {line:?} in {block:?}");
        }
    }
    Said::Event(
        name.expect("an event name"),
        data.expect("the event's data"),
    )
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

/// A password grant for `name` with `pw`, to send from a chosen address.
pub fn sign_in_request(name: &str, pw: &str) -> Request<Body> {
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

pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 9, 8, last))
}

/// A value for [`sql`] and [`sql_rows`], on either store.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}

impl From<i32> for Val {
    fn from(v: i32) -> Self {
        Val::Int(v.into())
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_owned())
    }
}

impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(v.clone())
    }
}

impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Self {
        Val::Bytes(v)
    }
}

impl Val {
    /// The value as an integer (PostgreSQL's rows come as text).
    pub fn int(&self) -> i64 {
        match self {
            Val::Int(v) => *v,
            Val::Text(t) => t.parse().unwrap(),
            Val::Bytes(_) => panic!("bytes, not an integer"),
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Val::Text(t) => t,
            other => panic!("{other:?}, not text"),
        }
    }

    /// The value as bytes (PostgreSQL's come as `\x` and hex).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Val::Bytes(b) => b.clone(),
            Val::Text(t) => {
                let hex = t.strip_prefix("\\x").expect("bytea in hex");
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect()
            }
            Val::Int(_) => panic!("an integer, not bytes"),
        }
    }

    /// The value as a PostgreSQL literal.
    fn pg_literal(&self) -> String {
        match self {
            Val::Int(v) => v.to_string(),
            Val::Text(t) => format!("'{}'", t.replace('\'', "''")),
            Val::Bytes(b) => {
                let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
                format!("'\\x{hex}'::bytea")
            }
        }
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Val::Int(v) => v.to_sql(),
            Val::Text(t) => t.to_sql(),
            Val::Bytes(b) => b.to_sql(),
        }
    }
}

/// `statement` with its `?N` placeholders as PostgreSQL literals of
/// `params`.
fn with_literals(statement: &str, params: &[Val]) -> String {
    let mut out = String::new();
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        let mut n = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            n.push(*d);
            chars.next();
        }
        let i: usize = n.parse().expect("a numbered placeholder");
        out.push_str(&params[i - 1].pg_literal());
    }
    out
}

/// Runs a statement on the app's database, as an operator (or the clock)
/// would. Placeholders are `?1`, `?2`...; the SQL must mean the same to
/// SQLite and PostgreSQL.
pub fn sql(app: &App, statement: &str, params: &[Val]) {
    if on_postgres() {
        PgCluster::shared().psql(&app.db, &with_literals(statement, params));
        return;
    }
    let conn = rusqlite::Connection::open(&app.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute(statement, rusqlite::params_from_iter(params))
        .unwrap();
}

/// The rows a query on the app's database returns (see [`sql`]).
pub fn sql_rows(app: &App, statement: &str, params: &[Val]) -> Vec<Vec<Val>> {
    if on_postgres() {
        let out = PgCluster::shared().psql(&app.db, &with_literals(statement, params));
        return out
            .lines()
            .map(|line| line.split('\t').map(Val::from).collect())
            .collect();
    }
    let conn = rusqlite::Connection::open(&app.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn.prepare(statement).unwrap();
    let columns = stmt.column_count();
    stmt.query_map(rusqlite::params_from_iter(params), |r| {
        (0..columns)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Integer(v) => Val::Int(v),
                    rusqlite::types::ValueRef::Text(t) => {
                        Val::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
                    other => panic!("a column of {other:?}"),
                })
            })
            .collect()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

pub fn sha256(s: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes()).to_vec()
}
