//! Process tests: the real `latchkey-server` binary on 127.0.0.1 (port 0,
//! learnt from its log line), talked to only over HTTP, and its command
//! line run as subprocesses, the way an administrator and the black-box
//! suite use it. Each test's database is on the store
//! `LATCHKEY_TEST_STORE` names (SQLite by default, or PostgreSQL).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use latchkey_testkit::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_latchkey-server");

/// A fresh database, and a temporary directory of the test's own.
struct Env {
    test_db: TestDb,
    /// The database, as `--db` takes it (a URL on PostgreSQL).
    db: PathBuf,
}

impl Env {
    fn new() -> Self {
        let test_db = TestDb::new("s.db");
        let db = PathBuf::from(test_db.arg());
        Self { test_db, db }
    }

    fn dir(&self) -> &Path {
        self.test_db.dir()
    }

    fn db(&self) -> &str {
        self.db.to_str().unwrap()
    }

    /// Starts `serve` on this database with extra flags.
    fn start(&self, extra: &[&str]) -> Server {
        Server::start(&self.db, extra, &[])
    }

    /// Runs a CLI subcommand on this database.
    fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--db", self.db()]);
        run(&all, stdin)
    }

    /// Adds a user with the CLI; returns (name, password).
    fn add_user(&self) -> (String, String) {
        let (name, pw) = (unique("user"), password());
        add_user(BIN.as_ref(), &self.db, &name, &pw);
        (name, pw)
    }
}

/// Runs the binary to completion (killed after 30 s), stdin fed from `stdin`.
fn run(args: &[&str], stdin: Option<&str>) -> Output {
    run_env(args, stdin, &[])
}

fn run_env(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    run_cli(BIN.as_ref(), args, stdin, env)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a clean failure: non-zero exit, something said, no panic.
fn assert_clean_failure(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded; stderr: {err}");
    assert!(out.status.code().is_some(), "{what}: killed by a signal");
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    assert!(!err.contains("RUST_BACKTRACE"), "{what}: {err}");
    assert!(!err.trim().is_empty(), "{what}: said nothing");
    err
}

/// A running server process (killed on drop), and a client for it. With
/// `LATCHKEY_TEST_SERVERS=N` (on PostgreSQL), N instances on the database
/// behind nginx, talked to through nginx (testkit `behind_nginx`): the
/// protocol over a real load balancer, each request to the next instance.
struct Server {
    /// Dropped first: nothing reaches an instance being killed.
    nginx: Option<Nginx>,
    processes: Vec<ServerProcess>,
    http: reqwest::Client,
}

impl Server {
    fn start(db: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let spawn = || {
            Spawn::serve(db)
                .bin(BIN)
                .args(extra)
                .envs(env.iter().copied())
        };
        let (processes, nginx) = if in_cluster() {
            assert!(
                on_postgres(),
                "several instances share a PostgreSQL database: set LATCHKEY_TEST_STORE=postgres"
            );
            let (processes, nginx) = behind_nginx(free_port(), test_servers(), spawn);
            (processes, Some(nginx))
        } else {
            (vec![spawn().start()], None)
        };
        let srv = Server {
            processes,
            nginx,
            http: web(),
        };
        let url = srv.base();
        assert!(
            url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"),
            "the server listens elsewhere: {url}"
        );
        srv
    }

    /// The one server process.
    ///
    /// # Panics
    /// With several instances: a test that needs one skips with
    /// `skip_in_cluster`.
    fn process(&self) -> &ServerProcess {
        assert!(
            self.nginx.is_none(),
            "one process asked of several instances"
        );
        &self.processes[0]
    }

    /// Where clients go: nginx, in front of several instances.
    fn base(&self) -> String {
        match &self.nginx {
            Some(nginx) => nginx.url(),
            None => self.processes[0].url().to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn port(&self) -> u16 {
        match &self.nginx {
            Some(nginx) => nginx.port,
            None => self.processes[0].port(),
        }
    }

    /// What the server logged: every instance's, one after another.
    fn stderr(&self) -> String {
        self.processes.iter().map(ServerProcess::stderr).collect()
    }

    /// Sends a request and checks what every answer must have: a Date, a
    /// JSON body, never a 5xx or 422, a protocol body on every error.
    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let res = req.send().await.expect("HTTP request failed");
        let what = res.url().to_string();
        let status = res.status();
        let headers = res.headers().clone();
        let raw = res.bytes().await.unwrap().to_vec();
        assert!(
            !status.is_server_error(),
            "{status}: {}",
            String::from_utf8_lossy(&raw)
        );
        assert!(headers.contains_key("date"), "no Date header");
        Resp::new(&what, status, headers, raw)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    async fn form(&self, path: &str, form: &[(&str, &str)], token: Option<&str>) -> Resp {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    async fn login(&self, name: &str, pw: &str) -> Resp {
        self.form(
            "/v1/auth/token",
            &[
                ("grant_type", "password"),
                ("username", name),
                ("password", pw),
            ],
            None,
        )
        .await
    }

    /// A sign-in as a proxy would pass it on, with `X-Forwarded-For`.
    async fn login_via(&self, xff: &str, name: &str, pw: &str) -> Resp {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "password"),
                ("username", name),
                ("password", pw),
            ])
            .finish();
        self.send(
            self.http
                .post(self.url("/v1/auth/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-forwarded-for", xff)
                .body(body),
        )
        .await
    }

    async fn refresh(&self, rt: &str) -> Resp {
        self.form(
            "/v1/auth/token",
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
            None,
        )
        .await
    }

    async fn session(&self, at: &str) -> Resp {
        self.get("/v1/auth/session", Some(at)).await
    }

    async fn push(&self, at: &str, body: &Value) -> Resp {
        self.send(
            self.http
                .post(self.url("/v1/sync/push"))
                .bearer_auth(at)
                .json(body),
        )
        .await
    }

    async fn push_ok(&self, at: &str, list: Vec<Value>) -> Value {
        self.push(at, &ops(list)).await.ok().clone()
    }

    async fn pull_ok(&self, at: &str, query: &str) -> Value {
        self.get(&format!("/v1/sync/pull{query}"), Some(at))
            .await
            .ok()
            .clone()
    }

    /// Sends SIGTERM and waits (at most 15 s) for the exit: of every
    /// instance (nginx stopped first), the first unclean exit if any.
    fn terminate(&mut self) -> std::process::ExitStatus {
        self.nginx = None;
        let statuses: Vec<_> = self.processes.iter_mut().map(|p| p.terminate()).collect();
        statuses
            .iter()
            .find(|s| !s.success())
            .copied()
            .unwrap_or(statuses[0])
    }

    /// SIGKILL, every instance (nginx stopped first).
    fn kill(&mut self) {
        self.nginx = None;
        for p in &mut self.processes {
            p.kill();
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_string()
}

/// The current signing key, read from the database as only the server
/// (and an attacker who stole the file) could.
fn current_key(env: &Env) -> (SigningKey, String) {
    let Some(db) = env.test_db.sqlite_path() else {
        let row = env.test_db.psql(
            "SELECT kid, encode(secret, 'hex') FROM signing_keys \
             WHERE retired_at IS NULL ORDER BY seq DESC LIMIT 1",
        );
        let (kid, hex) = row.trim().split_once('\t').unwrap();
        let secret: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        return (
            SigningKey::from_bytes(&secret.try_into().unwrap()),
            kid.to_owned(),
        );
    };
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (kid, secret): (String, Vec<u8>) = conn
        .query_row(
            "SELECT kid, secret FROM signing_keys WHERE retired_at IS NULL ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (SigningKey::from_bytes(&secret.try_into().unwrap()), kid)
}

// ------------------------------------------------------------------ basics

#[tokio::test]
async fn serves_health_metadata_and_jwks() {
    let env = Env::new();
    let srv = env.start(&[]);
    let r = srv.get("/healthz", None).await;
    assert_eq!(r.ok(), &json!({"status": "ok"}));
    let date = r.header("date").unwrap();
    assert!(date.ends_with("GMT"), "{date}");

    let issuer = format!("http://127.0.0.1:{}", srv.port());
    let m = srv
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .ok()
        .clone();
    assert_eq!(
        m,
        json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/v1/auth/token"),
            "revocation_endpoint": format!("{issuer}/v1/auth/revoke"),
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "grant_types_supported": ["password", "refresh_token"],
        })
    );
    let r = srv.get("/.well-known/jwks.json", None).await;
    assert!(r.header("cache-control").unwrap().contains("max-age=300"));
    let keys = r.ok()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["alg"], "EdDSA");
    assert_eq!(keys[0]["use"], "sig");
    // One log line per request, with a request id sent back.
    assert!(r.header("x-request-id").is_some());
    srv.get("/nope", None).await.err(404, "not_found");
    srv.send(srv.http.delete(srv.url("/healthz")))
        .await
        .err(405, "method_not_allowed");
    srv.send(srv.http.get(srv.url("/v1/auth/token")))
        .await
        .err(405, "method_not_allowed");
    let log = srv.stderr();
    assert!(log.contains("request_id"), "{log}");
}

#[tokio::test]
async fn sign_in_sync_refresh_and_log_out() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    let r = srv.login(&name, &pw).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t = r.ok().clone();
    assert_token_response(&t, &name);
    assert_eq!(t["expires_in"], 900);
    assert_eq!(t["refresh_expires_in"], 2_592_000);
    let at = s(&t, "access_token");
    let claims = jwt_part(&at, 1);
    // A user added while the server runs can sign in at once.
    let (late, late_pw) = env.add_user();
    srv.login(&late, &late_pw).await.ok();
    assert_eq!(claims["iss"], format!("http://127.0.0.1:{}", srv.port()));
    assert_eq!(claims["aud"], "latchkey");
    assert_eq!(claims["name"], name.as_str());
    assert_eq!(claims["sid"], t["session_id"]);
    let jwks: latchkey_protocol::Jwks =
        serde_json::from_value(srv.get("/.well-known/jwks.json", None).await.ok().clone()).unwrap();
    latchkey_protocol::KeySet::from_jwks(&jwks)
        .unwrap()
        .verify(&at, claims["iss"].as_str().unwrap(), now(), 30)
        .unwrap();

    let sess = srv.session(&at).await.ok().clone();
    assert_eq!(sess["session_id"], t["session_id"]);
    assert_eq!(sess["user"], t["user"]);
    assert_eq!(sess["expires_at"], claims["exp"]);

    let (op, n) = (uuid(), uuid());
    let res = srv
        .push_ok(&at, vec![upsert(&op, &n, 0, "hello", "world")])
        .await;
    assert_eq!(
        res,
        json!({"results": [{"op_id": op, "status": "applied", "note_id": n, "rev": 1}],
               "cursor": 1})
    );
    let pulled = srv.pull_ok(&at, "?since=0&limit=10").await;
    assert_eq!(pulled["cursor"], 1);
    assert_eq!(pulled["more"], false);
    assert_eq!(pulled["changes"][0]["title"], "hello");

    let r = srv.refresh(&s(&t, "refresh_token")).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t2 = r.ok().clone();
    assert_ne!(t2["refresh_token"], t["refresh_token"]);
    assert_eq!(t2["session_id"], t["session_id"]);
    let at2 = s(&t2, "access_token");
    srv.session(&at2).await.ok();

    // Log out with the refresh token.
    srv.form(
        "/v1/auth/revoke",
        &[("token", &s(&t2, "refresh_token"))],
        None,
    )
    .await
    .ok();
    for a in [&at, &at2] {
        let r = srv.session(a).await;
        r.unauthorized();
        assert_eq!(r.body["reason"], "revoked");
    }
    let r = srv.refresh(&s(&t2, "refresh_token")).await;
    r.err(400, "invalid_grant");
    assert_eq!(r.body["reason"], "revoked");

    // Log out with the access token and an empty body.
    let t3 = srv.login(&name, &pw).await.ok().clone();
    let at3 = s(&t3, "access_token");
    srv.send(srv.http.post(srv.url("/v1/auth/revoke")).bearer_auth(&at3))
        .await
        .ok();
    srv.session(&at3).await.unauthorized();
    // An unknown token: 200 all the same.
    srv.form("/v1/auth/revoke", &[("token", "unknown")], None)
        .await
        .ok();
}

#[tokio::test]
async fn every_error_code_over_http() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    let t = srv.login(&name, &pw).await.ok().clone();
    let at = s(&t, "access_token");

    // invalid_request
    srv.form(
        "/v1/auth/token",
        &[("grant_type", "password"), ("username", &name)],
        None,
    )
    .await
    .err(400, "invalid_request");
    srv.send(
        srv.http
            .post(srv.url("/v1/auth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=password&grant_type=password&username=a&password=b"),
    )
    .await
    .err(400, "invalid_request");
    srv.send(
        srv.http
            .post(srv.url("/v1/sync/push"))
            .bearer_auth(&at)
            .header("content-type", "application/json")
            .body("{\"ops\": [}"),
    )
    .await
    .err(400, "invalid_request");
    srv.push(&at, &json!({"ops": [{"op_id": 1}]}))
        .await
        .err(400, "invalid_request");
    srv.push(&at, &ops(vec![upsert(&uuid(), "nope", 0, "", "")]))
        .await
        .err(400, "invalid_request");
    srv.push(&at, &ops(vec![upsert(&uuid(), &uuid(), -1, "", "")]))
        .await
        .err(400, "invalid_request");
    srv.push(
        &at,
        &ops(vec![
            json!({"op_id": uuid(), "note_id": uuid(), "base_rev": 0, "action": "archive"}),
        ]),
    )
    .await
    .err(400, "invalid_request");
    srv.push(
        &at,
        &ops(vec![upsert(&uuid(), &uuid(), 0, &"t".repeat(4097), "")]),
    )
    .await
    .err(400, "invalid_request");
    srv.push(
        &at,
        &ops((0..1001)
            .map(|_| upsert(&uuid(), &uuid(), 0, "", ""))
            .collect()),
    )
    .await
    .err(400, "invalid_request");
    srv.get("/v1/sync/pull?since=-1", Some(&at))
        .await
        .err(400, "invalid_request");
    srv.get("/v1/sync/pull?limit=zero", Some(&at))
        .await
        .err(400, "invalid_request");
    // 415 invalid_request
    srv.send(
        srv.http
            .post(srv.url("/v1/auth/token"))
            .json(&json!({"grant_type": "password", "username": name, "password": pw})),
    )
    .await
    .err(415, "invalid_request");
    srv.send(
        srv.http
            .post(srv.url("/v1/sync/push"))
            .bearer_auth(&at)
            .header("content-type", "text/plain")
            .body(r#"{"ops":[]}"#),
    )
    .await
    .err(415, "invalid_request");
    // unsupported_grant_type
    srv.form(
        "/v1/auth/token",
        &[("grant_type", "client_credentials")],
        None,
    )
    .await
    .err(400, "unsupported_grant_type");
    // invalid_grant, with a reason
    let r = srv.login(&name, "wrong").await;
    r.err(400, "invalid_grant");
    let r2 = srv.login(&unique("ghost"), "wrong").await;
    assert_eq!(r.body, r2.body, "a username's existence leaks");
    let r = srv.refresh("unknown").await;
    r.err(400, "invalid_grant");
    assert_eq!(r.body["reason"], "invalid");
    // invalid_token: without error= when no token was sent
    let r = srv.get("/v1/auth/session", None).await;
    r.err(401, "invalid_token");
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer") && !www.contains("error="),
        "{www}"
    );
    srv.session("garbage").await.unauthorized();
    // not_found, method_not_allowed
    srv.get("/v1/nothing", Some(&at))
        .await
        .err(404, "not_found");
    srv.send(srv.http.put(srv.url("/v1/sync/push")).bearer_auth(&at))
        .await
        .err(405, "method_not_allowed");
    // request_too_large
    let big = "x".repeat(64 * 1024);
    srv.form(
        "/v1/auth/token",
        &[
            ("grant_type", "password"),
            ("username", &name),
            ("password", &big),
        ],
        None,
    )
    .await
    .err(413, "request_too_large");
    // The bad pushes applied nothing.
    assert_eq!(srv.pull_ok(&at, "").await["cursor"], 0);
}

#[tokio::test]
async fn a_push_over_8_mib_is_413() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    let t = srv.login(&name, &pw).await.ok().clone();
    let at = s(&t, "access_token");
    let big = "b".repeat(3 * 1024 * 1024);
    let body = ops((0..3)
        .map(|_| upsert(&uuid(), &uuid(), 0, "t", &big))
        .collect());
    for _ in 0..3 {
        srv.push(&at, &body).await.err(413, "request_too_large");
    }
    // Just under the limit is fine: 2 notes of 3 MiB.
    let body = ops((0..2)
        .map(|_| upsert(&uuid(), &uuid(), 0, "t", &big))
        .collect());
    srv.push(&at, &body).await.ok();
    assert_eq!(srv.pull_ok(&at, "?limit=1").await["more"], true);
}

#[tokio::test]
async fn throttles_failed_sign_ins() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let (other, other_pw) = env.add_user();
    let srv = env.start(&[]);
    for _ in 0..10 {
        srv.login(&name, "wrong").await.err(400, "invalid_grant");
    }
    let r = srv.login(&name, "wrong").await;
    r.err(429, "slow_down");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&wait));
    let r = srv.login(&name, &pw).await;
    r.err(429, "slow_down");
    assert!(r.header("retry-after").is_some());
    srv.login(&other, &other_pw).await.ok();
}

// ---------------------------------------------------------- forged tokens

#[tokio::test]
async fn forged_tokens_are_refused() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    let t = srv.login(&name, &pw).await.ok().clone();
    let at = s(&t, "access_token");
    let jwks = srv.get("/.well-known/jwks.json", None).await.ok().clone();
    let kid = s(&jwks["keys"][0], "kid");
    let x = s(&jwks["keys"][0], "x");
    let good = jwt_part(&at, 1);
    let (real, real_kid) = current_key(&env);
    assert_eq!(real_kid, kid);
    // Sanity: a token made with the real key and good claims is accepted,
    // so each refusal below is for the one thing changed.
    srv.session(&sign_raw(&real, &header(&kid), &good))
        .await
        .ok();

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let mut forged: Vec<(&str, String)> = Vec::new();
    for tok in alg_none(&kid, &good) {
        forged.push(("alg none", tok));
    }
    for tok in hs256_with_public_key(&x, &kid, &good) {
        forged.push(("HS256 with the public key", tok));
    }
    forged.push((
        "tampered payload",
        tamper(&at, &with("name", json!("admin"))),
    ));
    forged.push((
        "foreign key, real kid",
        sign_raw(&SigningKey::from_bytes(&[3u8; 32]), &header(&kid), &good),
    ));
    forged.push((
        "expired",
        sign_raw(&real, &header(&kid), &with("exp", json!(now() - 300))),
    ));
    forged.push((
        "wrong iss",
        sign_raw(
            &real,
            &header(&kid),
            &with("iss", json!("http://evil.test")),
        ),
    ));
    forged.push((
        "wrong aud",
        sign_raw(&real, &header(&kid), &with("aud", json!("other"))),
    ));
    forged.push((
        "wrong typ",
        sign_raw(
            &real,
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
            &good,
        ),
    ));
    forged.push((
        "over 8 KiB",
        sign_raw(&real, &header(&kid), &with("pad", json!("p".repeat(9000)))),
    ));
    for g in garbage_tokens() {
        forged.push(("garbage", g));
    }
    for (label, tok) in &forged {
        let r = srv.session(tok).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{label}: {}", r.text());
        r.unauthorized();
        srv.get("/v1/sync/pull", Some(tok)).await.unauthorized();
        srv.push(tok, &ops(vec![])).await.unauthorized();
    }
    srv.session(&at).await.ok();
    assert!(!srv.stderr().contains(&at));
}

// ---------------------------------------------------------------- lifetimes

#[tokio::test]
async fn access_tokens_expire_and_a_refresh_gets_a_new_one() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&["--access-ttl", "2s", "--leeway", "0s"]);
    let t = srv.login(&name, &pw).await.ok().clone();
    assert_eq!(t["expires_in"], 2);
    let at = s(&t, "access_token");
    srv.session(&at).await.ok();
    let (srv_, at_) = (&srv, &at);
    let expired = poll_until(Duration::from_secs(6), || async move {
        let r = srv_.session(at_).await;
        (r.status == StatusCode::UNAUTHORIZED).then_some(r)
    })
    .await
    .expect("the access token never expired")
    .0;
    expired.unauthorized();
    assert_eq!(expired.body["reason"], "expired");
    let t2 = srv.refresh(&s(&t, "refresh_token")).await.ok().clone();
    srv.session(&s(&t2, "access_token")).await.ok();
}

#[tokio::test]
async fn sessions_end_at_the_refresh_lifetime() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&["--refresh-ttl", "3s", "--leeway", "0s"]);
    let t = srv.login(&name, &pw).await.ok().clone();
    assert!(t["refresh_expires_in"].as_u64().unwrap() <= 3);
    // An access token never outlives its session.
    assert!(t["expires_in"].as_u64().unwrap() <= 3);
    let started = Instant::now();
    let mut rt = s(&t, "refresh_token");
    let end = loop {
        let r = srv.refresh(&rt).await;
        if r.status != StatusCode::OK {
            break r;
        }
        rt = s(&r.body, "refresh_token");
        assert!(started.elapsed() < Duration::from_secs(8), "never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    end.err(400, "invalid_grant");
    assert_eq!(end.body["reason"], "expired");
    srv.session(&s(&t, "access_token")).await.unauthorized();
    // Signing in again starts a new session.
    srv.login(&name, &pw).await.ok();
}

// --------------------------------------------------- refresh-token reuse

#[tokio::test]
async fn refresh_token_reuse_and_the_retry_exception() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);

    // Reuse: R0 -> R1 -> R2, then R0 again kills the session at once.
    let t0 = srv.login(&name, &pw).await.ok().clone();
    let t1 = srv.refresh(&s(&t0, "refresh_token")).await.ok().clone();
    let t2 = srv.refresh(&s(&t1, "refresh_token")).await.ok().clone();
    let r = srv.refresh(&s(&t0, "refresh_token")).await;
    r.err(400, "invalid_grant");
    assert_eq!(r.body["reason"], "reused");
    for t in [&t0, &t1, &t2] {
        srv.session(&s(t, "access_token")).await.unauthorized();
    }
    let r = srv.refresh(&s(&t2, "refresh_token")).await;
    r.err(400, "invalid_grant");

    // Retry: R0 -> R1 (answer lost), R0 again -> R2, and the session goes on.
    let t0 = srv.login(&name, &pw).await.ok().clone();
    let lost = srv.refresh(&s(&t0, "refresh_token")).await.ok().clone();
    let t2 = srv.refresh(&s(&t0, "refresh_token")).await.ok().clone();
    assert_eq!(t2["session_id"], t0["session_id"]);
    assert_ne!(t2["refresh_token"], lost["refresh_token"]);
    srv.session(&s(&t2, "access_token")).await.ok();
    let t3 = srv.refresh(&s(&t2, "refresh_token")).await.ok().clone();
    srv.session(&s(&t3, "access_token")).await.ok();

    // v1.1: the retired R1 presented later is reuse: the session ends.
    let t0 = srv.login(&name, &pw).await.ok().clone();
    let lost = srv.refresh(&s(&t0, "refresh_token")).await.ok().clone();
    let t2 = srv.refresh(&s(&t0, "refresh_token")).await.ok().clone();
    let r = srv.refresh(&s(&lost, "refresh_token")).await;
    r.err(400, "invalid_grant");
    assert_eq!(r.body["reason"], "reused");
    srv.refresh(&s(&t2, "refresh_token"))
        .await
        .err(400, "invalid_grant");
    for t in [&t0, &lost, &t2] {
        let r = srv.session(&s(t, "access_token")).await;
        r.unauthorized();
        assert_eq!(r.body["reason"], "reused");
    }

    // A thief replays the spent R0 within 60 s while the client holds R1:
    // the thief gets R2, the client's R1 then ends the session for both.
    let t0 = srv.login(&name, &pw).await.ok().clone();
    let client = srv.refresh(&s(&t0, "refresh_token")).await.ok().clone();
    let thief = srv.refresh(&s(&t0, "refresh_token")).await.ok().clone();
    let r = srv.refresh(&s(&client, "refresh_token")).await;
    assert_eq!(r.body["reason"], "reused");
    srv.refresh(&s(&thief, "refresh_token"))
        .await
        .err(400, "invalid_grant");
    srv.session(&s(&thief, "access_token")).await.unauthorized();
}

// ------------------------------------------------------------ v1.1 sync

#[tokio::test]
async fn a_pull_from_a_cursor_ahead_of_the_server_is_409_cursor_ahead() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    let at = s(srv.login(&name, &pw).await.ok(), "access_token");
    srv.push_ok(&at, vec![upsert(&uuid(), &uuid(), 0, "t", "b")])
        .await;
    // As after a restore from an older backup: the client's cursor is ahead.
    let r = srv.get("/v1/sync/pull?since=1000000000", Some(&at)).await;
    r.err(409, "cursor_ahead");
    // The latest rev itself is an ordinary empty page.
    let p = srv.pull_ok(&at, "?since=1").await;
    assert_eq!(p, json!({"changes": [], "cursor": 1, "more": false}));
}

// ------------------------------------------------ v1.1 proxies and limits

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_throttled_on_its_own() {
    if skip_in_cluster(
        "it sets --trusted-proxy itself; the instances behind nginx are told 127.0.0.1",
    ) {
        return;
    }
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--trusted-proxy",
        "fd00::/8",
    ]);
    // 50 failures from 50 clients behind the proxy (all from 127.0.0.1)...
    for i in 0..50 {
        srv.login_via(&format!("198.51.100.{i}"), &name, "wrong")
            .await
            .err(400, "invalid_grant");
    }
    // ...do not block another client, nor do they block the address.
    srv.login_via("203.0.113.5, 127.0.0.1", &name, &pw)
        .await
        .ok();
    // The forwarded client is what is counted: ten failures from one.
    for _ in 0..10 {
        srv.login_via("198.51.100.200", &name, "wrong")
            .await
            .err(400, "invalid_grant");
    }
    srv.login_via("198.51.100.200", &name, &pw)
        .await
        .err(429, "slow_down");
    srv.login_via("198.51.100.201", &name, &pw).await.ok();

    // Without the flag, X-Forwarded-For changes nothing: the peer is counted.
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    for i in 0..10 {
        srv.login_via(&format!("198.51.100.{i}"), &name, "wrong")
            .await
            .err(400, "invalid_grant");
    }
    srv.login_via("203.0.113.5", &name, &pw)
        .await
        .err(429, "slow_down");

    // The variable takes a comma-separated list.
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = Server::start(
        &env.db,
        &[],
        &[("LATCHKEY_TRUSTED_PROXY", "10.0.0.0/8,127.0.0.1")],
    );
    for _ in 0..10 {
        srv.login_via("198.51.100.9", &name, "wrong")
            .await
            .err(400, "invalid_grant");
    }
    srv.login_via("198.51.100.10", &name, &pw).await.ok();
}

#[test]
fn a_bad_trusted_proxy_is_one_clear_sentence() {
    let env = Env::new();
    for bad in ["10.0.0.0/33", "not-an-address", "fd00::/200"] {
        let out = run(
            &[
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--db",
                env.db(),
                "--trusted-proxy",
                bad,
            ],
            None,
        );
        let err = assert_clean_failure(&out, bad);
        assert_eq!(said(&err).len(), 1, "{err}");
        assert!(
            err.contains("--trusted-proxy") && err.contains(bad),
            "{err}"
        );
        let out = run_env(
            &["serve", "--addr", "127.0.0.1:0", "--db", env.db()],
            None,
            &[("LATCHKEY_TRUSTED_PROXY", &format!("127.0.0.1/32,{bad}"))],
        );
        let err = assert_clean_failure(&out, bad);
        assert_eq!(said(&err).len(), 1, "{err}");
    }
}

// ------------------------------------------------------- the CLI, live

#[tokio::test]
async fn cli_session_revoke_applies_within_a_second() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let (other, other_pw) = env.add_user();
    let srv = env.start(&[]);
    let a = srv.login(&name, &pw).await.ok().clone();
    let b = srv.login(&name, &pw).await.ok().clone();
    let o = srv.login(&other, &other_pw).await.ok().clone();
    let (at_a, at_b) = (s(&a, "access_token"), s(&b, "access_token"));
    srv.session(&at_a).await.ok();
    srv.session(&at_b).await.ok();

    let out = env.cli(&["session", "revoke", "--username", &name], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = Instant::now();
    assert!(text(&out.stdout).contains('2'), "{}", text(&out.stdout));
    let (srv_, at_) = (&srv, &at_a);
    let (_, waited) = poll_until(Duration::from_secs(5), || async move {
        (srv_.session(at_).await.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await
    .expect("the revocation never took effect");
    let total = done.elapsed();
    assert!(
        total <= Duration::from_millis(1500),
        "revocation took {total:?} (polled {waited:?})"
    );
    let r = srv.session(&at_b).await;
    r.unauthorized();
    assert_eq!(r.body["reason"], "revoked");
    let r = srv.refresh(&s(&a, "refresh_token")).await;
    r.err(400, "invalid_grant");
    assert_eq!(r.body["reason"], "revoked");
    srv.get("/v1/sync/pull", Some(&at_b)).await.unauthorized();
    srv.session(&s(&o, "access_token")).await.ok();
    // The user can sign in again.
    let again = srv.login(&name, &pw).await.ok().clone();
    srv.session(&s(&again, "access_token")).await.ok();

    // An unknown user: a clear failure.
    let out = env.cli(&["session", "revoke", "--username", &unique("ghost")], None);
    assert_clean_failure(&out, "revoke of an unknown user");
}

#[tokio::test]
async fn cli_keys_rotate_is_picked_up_within_a_second() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    let t = srv.login(&name, &pw).await.ok().clone();
    let old_at = s(&t, "access_token");
    let old_kid = s(&jwt_part(&old_at, 0), "kid");

    let out = env.cli(&["keys", "rotate"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = Instant::now();
    let mut rt = s(&t, "refresh_token");
    let fresh = loop {
        let r = srv.refresh(&rt).await.ok().clone();
        rt = s(&r, "refresh_token");
        let at = s(&r, "access_token");
        if jwt_part(&at, 0)["kid"] != old_kid.as_str() {
            break at;
        }
        assert!(done.elapsed() < Duration::from_secs(5), "still the old key");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let took = done.elapsed();
    assert!(
        took <= Duration::from_millis(1500),
        "rotation took {took:?}"
    );
    let new_kid = s(&jwt_part(&fresh, 0), "kid");
    let jwks = srv.get("/.well-known/jwks.json", None).await.ok().clone();
    let kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| s(k, "kid"))
        .collect();
    assert!(
        kids.contains(&old_kid) && kids.contains(&new_kid),
        "{kids:?}"
    );
    // Tokens signed before the rotation still verify, and new ones too.
    srv.session(&old_at).await.ok();
    srv.session(&fresh).await.ok();
    let set = latchkey_protocol::KeySet::from_jwks(&serde_json::from_value(jwks).unwrap()).unwrap();
    let iss = format!("http://127.0.0.1:{}", srv.port());
    set.verify(&old_at, &iss, now(), 30).unwrap();
    set.verify(&fresh, &iss, now(), 30).unwrap();
    // Sign-ins use the new key too.
    let t2 = srv.login(&name, &pw).await.ok().clone();
    assert_eq!(
        jwt_part(&s(&t2, "access_token"), 0)["kid"],
        new_kid.as_str()
    );
}

#[tokio::test]
async fn two_instances_on_one_database_share_sessions_and_revocations() {
    if skip_in_cluster("it runs instances of its own") {
        return;
    }
    let env = Env::new();
    let (name, pw) = env.add_user();
    let issuer = ["--issuer", "http://latchkey.test"];
    let a = env.start(&issuer);
    let b = env.start(&issuer);
    let t = a.login(&name, &pw).await.ok().clone();
    let at = s(&t, "access_token");
    b.session(&at).await.ok();
    // A refresh on B of a token from A, then reuse detected on A.
    let t1 = b.refresh(&s(&t, "refresh_token")).await.ok().clone();
    let t2 = b.refresh(&s(&t1, "refresh_token")).await.ok().clone();
    let r = a.refresh(&s(&t, "refresh_token")).await;
    assert_eq!(r.body["reason"], "reused");
    a.session(&s(&t2, "access_token")).await.unauthorized();
    let done = Instant::now();
    let (b_, at2) = (&b, &s(&t2, "access_token"));
    poll_until(Duration::from_secs(5), || async move {
        (b_.session(at2).await.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await
    .expect("B never learnt of the revocation");
    assert!(done.elapsed() <= Duration::from_millis(1500));
    // Notes pushed through one are pulled through the other.
    let t3 = a.login(&name, &pw).await.ok().clone();
    let at3 = s(&t3, "access_token");
    a.push_ok(&at3, vec![upsert(&uuid(), &uuid(), 0, "via A", "")])
        .await;
    b.push_ok(&at3, vec![upsert(&uuid(), &uuid(), 0, "via B", "")])
        .await;
    let p = b.pull_ok(&at3, "").await;
    let revs: Vec<i64> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rev"].as_i64().unwrap())
        .collect();
    assert_eq!(revs, vec![1, 2]);
}

// ------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_pushes() {
    let env = Env::new();
    let users: Vec<(String, String)> = (0..5).map(|_| env.add_user()).collect();
    let srv = Arc::new(env.start(&[]));
    let mut tokens = Vec::new();
    for (n, p) in &users {
        tokens.push(s(srv.login(n, p).await.ok(), "access_token"));
    }

    // 50 from one user.
    let one = tokens[0].clone();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (srv, at) = (srv.clone(), one.clone());
            tokio::spawn(async move {
                srv.push(&at, &ops(vec![upsert(&uuid(), &uuid(), 0, "one", "")]))
                    .await
            })
        })
        .collect();
    let mut revs = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        let body = r.ok();
        assert_eq!(body["results"][0]["status"], "applied");
        revs.push(body["results"][0]["rev"].as_i64().unwrap());
    }
    revs.sort_unstable();
    assert_eq!(revs, (1..=50).collect::<Vec<_>>());
    let p = srv.pull_ok(&one, "").await;
    let pulled: Vec<i64> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rev"].as_i64().unwrap())
        .collect();
    assert_eq!(pulled, (1..=50).collect::<Vec<_>>());

    // 50 from several users (the other four, and the first again), all
    // also writing one shared note id.
    let shared = uuid();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (srv, at) = (srv.clone(), tokens[i % 5].clone());
            let note = if i < 5 { shared.clone() } else { uuid() };
            tokio::spawn(async move {
                let r = srv
                    .push(
                        &at,
                        &ops(vec![upsert(&uuid(), &note, 0, &format!("u{}", i % 5), "")]),
                    )
                    .await;
                (i % 5, r)
            })
        })
        .collect();
    let mut per_user = vec![Vec::new(); 5];
    for t in tasks {
        let (who, r) = t.await.unwrap();
        assert_eq!(r.ok()["results"][0]["status"], "applied");
        per_user[who].push(r.body["results"][0]["rev"].as_i64().unwrap());
    }
    for (i, mut revs) in per_user.into_iter().enumerate() {
        revs.sort_unstable();
        let base = if i == 0 { 50 } else { 0 };
        assert_eq!(revs, (base + 1..=base + 10).collect::<Vec<_>>(), "user {i}");
        let p = srv.pull_ok(&tokens[i], &format!("?since={base}")).await;
        let changes = p["changes"].as_array().unwrap();
        assert_eq!(changes.len(), 10);
        assert!(
            changes
                .iter()
                .all(|c| c["title"] == format!("u{i}").as_str())
        );
        assert!(changes.iter().any(|c| c["note_id"] == shared.as_str()));
    }
}

// -------------------------------------------------------------- durability

#[tokio::test]
async fn an_acknowledged_push_survives_sigkill() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let mut srv = env.start(&[]);
    let t = srv.login(&name, &pw).await.ok().clone();
    let at = s(&t, "access_token");
    let (op, n) = (uuid(), uuid());
    let batch = vec![upsert(&op, &n, 0, "durable", "survives a crash")];
    srv.push_ok(&at, batch.clone()).await;
    // SIGKILL right after the acknowledgement: no clean shutdown.
    srv.kill();
    drop(srv);

    let srv = env.start(&[]);
    // The refresh token of before the crash still works (new port, new
    // issuer, so a fresh access token is needed).
    let t2 = srv.refresh(&s(&t, "refresh_token")).await.ok().clone();
    let at2 = s(&t2, "access_token");
    let p = srv.pull_ok(&at2, "").await;
    assert_eq!(p["changes"][0]["note_id"], n.as_str());
    assert_eq!(p["changes"][0]["body"], "survives a crash");
    // The op log survived too: the retried push is a duplicate.
    let res = srv.push_ok(&at2, batch).await;
    assert_eq!(res["results"][0]["status"], "duplicate");
    assert_eq!(res["cursor"], 1);
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let env = Env::new();
    // Right after the "listening" line...
    let mut srv = env.start(&[]);
    let status = srv.terminate();
    assert!(status.success(), "{status}: {}", srv.stderr());
    // ...and after serving.
    let mut srv = env.start(&[]);
    srv.get("/healthz", None).await.ok();
    let status = srv.terminate();
    assert!(status.success(), "{status}: {}", srv.stderr());
    assert!(!srv.stderr().contains("panicked"));
}

// ---------------------------------------------------------------- the CLI

#[tokio::test]
async fn cli_session_list_user_passwd_and_user_delete() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let (other, other_pw) = env.add_user();
    let srv = env.start(&[]);
    let laptop = srv
        .form(
            "/v1/auth/token",
            &[
                ("grant_type", "password"),
                ("username", &name),
                ("password", &pw),
                ("device_name", "Ann's laptop"),
            ],
            None,
        )
        .await
        .ok()
        .clone();
    let plain = srv.login(&name, &pw).await.ok().clone();
    let o = srv.login(&other, &other_pw).await.ok().clone();
    srv.push_ok(
        &s(&o, "access_token"),
        vec![upsert(&uuid(), &uuid(), 0, "t", "b")],
    )
    .await;

    let out = env.cli(&["session", "list", "--username", &name], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(&out.stdout);
    assert_eq!(list.lines().count(), 2, "{list}");
    let line = list
        .lines()
        .find(|l| l.contains(&s(&laptop, "session_id")))
        .expect("the laptop's session");
    assert!(line.starts_with("Ann's laptop\tcreated 20"), "{line}");
    assert!(line.contains(" UTC\tlast seen 20"), "{line}");
    assert!(list.contains(&s(&plain, "session_id")), "{list}");

    // A new password: every session revoked, the old password refused.
    let out = env.cli(
        &["user", "passwd", "--username", &name, "--password-stdin"],
        Some("a whole new password\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("revoked 2 session(s)"),
        "{}",
        text(&out.stdout)
    );
    let (srv_, at) = (&srv, s(&laptop, "access_token"));
    let at_ = &at;
    poll_until(Duration::from_secs(5), || async move {
        (srv_.session(at_).await.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await
    .expect("the passwd revocation never took effect");
    srv.refresh(&s(&plain, "refresh_token"))
        .await
        .err(400, "invalid_grant");
    srv.login(&name, &pw).await.err(400, "invalid_grant");
    srv.login(&name, "a whole new password").await.ok();
    let out = env.cli(&["session", "list", "--username", &name], None);
    assert_eq!(text(&out.stdout).lines().count(), 1);
    for (args, stdin) in [
        (
            vec!["user", "passwd", "--username", &name, "--password-stdin"],
            "short\n",
        ),
        (
            vec!["user", "passwd", "--username", "ghost", "--password-stdin"],
            "long enough\n",
        ),
        (vec!["session", "list", "--username", "ghost"], ""),
        (vec!["user", "delete", "--username", &other], ""),
        (vec!["user", "delete", "--username", "ghost", "--yes"], ""),
    ] {
        let err = assert_clean_failure(&env.cli(&args, Some(stdin)), &format!("{args:?}"));
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    // Refused without --yes: the user is still there.
    srv.session(&s(&o, "access_token")).await.ok();

    let out = env.cli(&["user", "delete", "--username", &other, "--yes"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("1 note(s)") && said.contains("1 session(s)"),
        "{said}"
    );
    let at = s(&o, "access_token");
    let at_ = &at;
    poll_until(Duration::from_secs(5), || async move {
        (srv_.session(at_).await.status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await
    .expect("the deleted user's session still works");
    srv.login(&other, &other_pw).await.err(400, "invalid_grant");
    let users = text(&env.cli(&["user", "list"], None).stdout);
    assert!(!users.contains(&other) && users.contains(&name), "{users}");
}

#[test]
fn cli_user_add_and_list() {
    let env = Env::new();
    let (a, _) = env.add_user();
    let (b, _) = env.add_user();
    let out = env.cli(
        &["user", "add", "--username", &a, "--password-stdin"],
        Some("another\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert!(err.contains(&a), "{err}");
    assert!(!err.contains("panicked"));
    let out = env.cli(&["user", "list"], None);
    assert!(out.status.success());
    let list = text(&out.stdout);
    assert!(list.contains(&a) && list.contains(&b), "{list}");
    assert_eq!(list.lines().count(), 2, "{list}");
    // Bad input to `user add`.
    for (args, stdin) in [
        (
            vec!["user", "add", "--username", "", "--password-stdin"],
            "pw\n",
        ),
        (
            vec!["user", "add", "--username", "has space", "--password-stdin"],
            "pw\n",
        ),
        (
            vec![
                "user",
                "add",
                "--username",
                "nopassword",
                "--password-stdin",
            ],
            "\n",
        ),
        (
            vec![
                "user",
                "add",
                "--username",
                "nopassword2",
                "--password-stdin",
            ],
            "",
        ),
        // No terminal to prompt on.
        (vec!["user", "add", "--username", "noterminal"], ""),
    ] {
        let out = env.cli(&args, Some(stdin));
        assert_clean_failure(&out, &format!("{args:?}"));
    }
    let list = text(&env.cli(&["user", "list"], None).stdout);
    assert_eq!(list.lines().count(), 2, "{list}");
}

#[test]
fn cli_wrong_flags_fail_cleanly() {
    let env = Env::new();
    let db = env.db().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["bogus"],
        vec!["serve", "--bogus"],
        vec!["serve", "--db", &db, "--addr", "not-an-address"],
        vec!["serve", "--db", &db, "--access-ttl", "banana"],
        vec!["serve", "--db", &db, "--refresh-ttl", "-5s"],
        vec!["serve", "--db", &db, "--leeway", "2m"],
        vec!["serve", "--db", &db, "--access-ttl", "0s"],
        vec!["serve", "--db", &db, "--issuer", "ftp://example.test"],
        vec!["serve", "--db", &db, "--tls-cert", "/nonexistent.pem"],
        vec!["user"],
        vec!["user", "add", "--db", &db],
        vec!["user", "remove", "--username", "x", "--db", &db],
        vec!["session", "revoke", "--db", &db],
        vec!["keys", "spin", "--db", &db],
    ];
    for args in cases {
        let out = run(&args, None);
        assert_clean_failure(&out, &format!("{args:?}"));
    }
    // Missing TLS files: a clear sentence too.
    let out = run(
        &[
            "serve",
            "--db",
            &db,
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        None,
    );
    let err = assert_clean_failure(&out, "missing TLS files");
    assert!(err.contains("TLS") || err.contains("cert"), "{err}");
}

/// The lines of stderr that are not log lines of the server.
fn said(err: &str) -> Vec<&str> {
    err.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn an_unusable_database_is_one_clear_sentence() {
    if skip_on_postgres("SQLite files that are not databases") {
        return;
    }
    let env = Env::new();
    let garbage = env.dir().join("garbage.db");
    std::fs::write(
        &garbage,
        b"this is not a database, not at all; just some text ".repeat(200),
    )
    .unwrap();
    let not_a_file = env.dir().join("a-directory");
    std::fs::create_dir(&not_a_file).unwrap();
    let no_dir = env.dir().join("missing").join("s.db");
    let newer = env.dir().join("newer.db");
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.pragma_update(None, "user_version", 999).unwrap();
        c.execute_batch("CREATE TABLE t (x)").unwrap();
    }
    for db in [&garbage, &not_a_file, &no_dir, &newer] {
        let db = db.to_str().unwrap();
        for args in [
            vec!["user", "list", "--db", db],
            vec!["keys", "rotate", "--db", db],
            vec!["session", "revoke", "--username", "x", "--db", db],
            vec!["serve", "--addr", "127.0.0.1:0", "--db", db],
        ] {
            let out = run(&args, Some("pw\n"));
            let err = assert_clean_failure(&out, &format!("{args:?}"));
            let lines = said(&err);
            assert_eq!(lines.len(), 1, "{args:?}: {err}");
            assert!(
                lines[0].contains("database") || lines[0].contains("schema"),
                "{args:?}: {err}"
            );
        }
    }
    // Garbage stays garbage: nothing wrote over it.
    assert!(std::fs::read(&garbage).unwrap().starts_with(b"this is not"));
}

/// A PostgreSQL URL that cannot be used (nothing listens, an option
/// PostgreSQL does not know, a database that does not exist) is one
/// sentence naming the database, without its password.
#[test]
fn an_unusable_postgres_url_is_one_clear_sentence() {
    let port = free_port();
    let mut urls = vec![
        format!("postgres://latchkey:hunter2-secret@127.0.0.1:{port}/notes?sslmode=disable"),
        format!("postgresql://latchkey:hunter2-secret@127.0.0.1:{port}/notes?bogus=1"),
        format!("postgres://latchkey:hunter2-secret@127.0.0.1:{port}/notes?pool_size=0"),
    ];
    if on_postgres() {
        urls.push(PgCluster::shared().url("no_such_database"));
    }
    for url in &urls {
        for args in [
            vec!["user", "list", "--db", url],
            vec!["serve", "--addr", "127.0.0.1:0", "--db", url],
        ] {
            let out = run(&args, None);
            let err = assert_clean_failure(&out, url);
            let lines = said(&err);
            assert_eq!(lines.len(), 1, "{url}: {err}");
            assert!(lines[0].contains("cannot open the database"), "{err}");
            assert!(!err.contains("hunter2-secret"), "the password shown: {err}");
        }
    }
}

#[test]
fn a_port_in_use_is_one_clear_sentence() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["serve", "--addr", &addr, "--db", env.db()], None);
    let err = assert_clean_failure(&out, "port in use");
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains(&addr), "{err}");
    assert_eq!(said(&err).len(), 1, "{err}");
}

#[test]
fn plain_http_on_a_non_loopback_address_is_refused() {
    let env = Env::new();
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8787"] {
        let out = run(&["serve", "--addr", addr, "--db", env.db()], None);
        let err = assert_clean_failure(&out, addr);
        assert!(
            err.contains("--insecure-http") && err.contains("TLS"),
            "{err}"
        );
        // Refused before it even made a database.
    }
    if let Some(db) = env.test_db.sqlite_path() {
        assert!(!db.exists());
    }
}

#[tokio::test]
async fn demo_mode_prints_a_password_that_signs_in() {
    let env = Env::new();
    if on_postgres() {
        // The password is kept beside a database file: there is none.
        let out = run(&["serve", "--demo", "--db", env.db()], None);
        let err = assert_clean_failure(&out, "--demo on PostgreSQL");
        assert!(err.contains("--demo") && err.contains("user add"), "{err}");
        return;
    }
    let srv = env.start(&["--demo"]);
    let pw_file = PathBuf::from(format!("{}.demo-password", env.db()));
    let meta = std::fs::metadata(&pw_file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let password = std::fs::read_to_string(&pw_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(password.len() >= 12, "a weak demo password");
    let (srv_, pw_) = (&srv, &password);
    let printed = poll_until(Duration::from_secs(5), || async move {
        let out = srv_.process().stdout();
        out.contains(pw_.as_str()).then_some(out)
    })
    .await
    .expect("the demo password was not printed")
    .0;
    assert!(printed.contains("demo"), "{printed}");
    let t = srv.login("demo", &password).await.ok().clone();
    assert_eq!(t["user"]["username"], "demo");
    // The password never goes to the log.
    assert!(!srv.stderr().contains(&password));
    drop(srv);
    // Every start prints the same credentials, which still work.
    let srv = env.start(&["--demo"]);
    let (srv_, pw_) = (&srv, &password);
    poll_until(Duration::from_secs(5), || async move {
        srv_.process().stdout().contains(pw_.as_str()).then_some(())
    })
    .await
    .expect("the demo password was not printed again");
    srv.login("demo", &password).await.ok();
    let list = text(&env.cli(&["user", "list"], None).stdout);
    assert_eq!(list.matches("demo").count(), 1, "{list}");
}

#[tokio::test]
async fn the_database_is_private_and_the_log_holds_no_secret() {
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    // The file's permissions are SQLite's alone: PostgreSQL keeps its own.
    let on_sqlite = env.test_db.sqlite_path().is_some();
    if on_sqlite {
        assert_eq!(mode(&env.db), 0o600);
    }
    let t = srv.login(&name, &pw).await.ok().clone();
    let (at, rt) = (s(&t, "access_token"), s(&t, "refresh_token"));
    let wal = PathBuf::from(format!("{}-wal", env.db()));
    if on_sqlite && wal.exists() {
        assert_eq!(mode(&wal) & 0o077, 0, "the WAL is readable by others");
    }
    // Secrets in every place a careless log could pick them up from.
    let wrong_pw = unique("wrongpw");
    srv.login(&name, &wrong_pw).await.err(400, "invalid_grant");
    srv.login(&unique("nobody"), &wrong_pw).await;
    let t2 = srv.refresh(&rt).await.ok().clone();
    srv.refresh(&rt).await; // a reuse: logged as an event, not the token
    srv.get(
        &format!("/v1/sync/pull?since=0&token={rt}&password={pw}"),
        Some(&at),
    )
    .await;
    srv.session(&format!("{at}x")).await;
    srv.form(
        "/v1/auth/revoke",
        &[("token", &s(&t2, "refresh_token"))],
        None,
    )
    .await;
    // Neither is the database: it holds hashes only.
    let mut stored = Vec::new();
    if on_sqlite {
        for suffix in ["", "-wal"] {
            if let Ok(bytes) = std::fs::read(format!("{}{suffix}", env.db())) {
                stored.extend(bytes);
            }
        }
    } else {
        let dump = env.test_db.psql(
            "SELECT concat_ws(' ', (SELECT string_agg(t::text, ' ') FROM users t), \
             (SELECT string_agg(t::text, ' ') FROM sessions t), \
             (SELECT string_agg(t::text, ' ') FROM refresh_tokens t))",
        );
        stored.extend(dump.into_bytes());
    }
    for secret in [&pw, &rt, &s(&t2, "refresh_token"), &at] {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is stored in clear"
        );
    }
    let log = srv.stderr();
    for secret in [
        &pw,
        &wrong_pw,
        &at,
        &rt,
        &s(&t2, "refresh_token"),
        &s(&t2, "access_token"),
    ] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret is in the log:\n{log}"
        );
    }
    // The signature part alone is a secret too.
    assert!(!log.contains(at.rsplit('.').next().unwrap()));
    assert!(log.contains("request_id"), "{log}");
}

#[tokio::test]
async fn flags_read_their_environment_variables() {
    if skip_in_cluster("LATCHKEY_ISSUER would lose to the --issuer the instances are given") {
        return;
    }
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = Server::start(
        &env.db,
        &[],
        &[
            ("LATCHKEY_ACCESS_TTL", "2m"),
            ("LATCHKEY_REFRESH_TTL", "1h"),
            ("LATCHKEY_ISSUER", "http://notes.example.test"),
        ],
    );
    let m = srv
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .ok()
        .clone();
    assert_eq!(m["issuer"], "http://notes.example.test");
    assert_eq!(
        m["token_endpoint"],
        "http://notes.example.test/v1/auth/token"
    );
    let t = srv.login(&name, &pw).await.ok().clone();
    assert_eq!(t["expires_in"], 120);
    assert_eq!(t["refresh_expires_in"], 3600);
    let at = s(&t, "access_token");
    assert_eq!(jwt_part(&at, 1)["iss"], "http://notes.example.test");
    srv.session(&at).await.ok();
    // LATCHKEY_DB is the database of every subcommand.
    let out = run_env(&["user", "list"], None, &[("LATCHKEY_DB", env.db())]);
    assert!(text(&out.stdout).contains(&name));
    // Boolean flags take the usual spellings from their variables.
    let other = unique("envuser");
    let out = run_env(
        &["user", "add"],
        Some("secret-pw\n"),
        &[
            ("LATCHKEY_DB", env.db()),
            ("LATCHKEY_USERNAME", &other),
            ("LATCHKEY_PASSWORD_STDIN", "1"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    srv.login(&other, "secret-pw").await.ok();
    drop(srv);
    if skip_on_postgres("--demo keeps its password beside a SQLite file") {
        return;
    }
    for yes in ["1", "true", "yes"] {
        let env = Env::new();
        let srv = Server::start(&env.db, &[], &[("LATCHKEY_DEMO", yes)]);
        let pw = std::fs::read_to_string(format!("{}.demo-password", env.db())).unwrap();
        srv.login("demo", pw.trim()).await.ok();
    }
    let env = Env::new();
    let _srv = Server::start(&env.db, &[], &[("LATCHKEY_DEMO", "0")]);
    assert!(!Path::new(&format!("{}.demo-password", env.db())).exists());
}

#[tokio::test]
async fn serves_https_with_a_certificate() {
    if skip_in_cluster("nginx speaks plain HTTP to the instances") {
        return;
    }
    let env = Env::new();
    let Some(TestCert { ca, cert, key }) = localhost_cert(env.dir()) else {
        return;
    };
    let (name, pw) = env.add_user();
    let srv = env.start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let base = srv.process().url();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let mut pem = Vec::new();
    std::fs::File::open(&ca)
        .unwrap()
        .read_to_end(&mut pem)
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let https = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut srv = srv;
    srv.http = https;
    srv.get("/healthz", None).await.ok();
    let m = srv
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .ok()
        .clone();
    assert_eq!(m["issuer"], format!("https://127.0.0.1:{}", srv.port()));
    let t = srv.login(&name, &pw).await.ok().clone();
    srv.session(&s(&t, "access_token")).await.ok();
}

#[tokio::test]
async fn early_answers_to_big_bodies_are_read_not_reset() {
    // A handler that answers before reading a big body must not leave the
    // client with a reset connection instead of the answer.
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = env.start(&[]);
    let at = s(srv.login(&name, &pw).await.ok(), "access_token");
    let big = "b".repeat(3 * 1024 * 1024);
    let body = ops((0..2)
        .map(|_| upsert(&uuid(), &uuid(), 0, "t", &big))
        .collect());
    srv.push("not-a-token", &body).await.unauthorized();
    srv.send(srv.http.post(srv.url("/v1/sync/push")).json(&body))
        .await
        .err(401, "invalid_token");
    srv.send(srv.http.post(srv.url("/v1/sync/nothing")).json(&body))
        .await
        .err(404, "not_found");
    srv.send(srv.http.put(srv.url("/v1/sync/push")).json(&body))
        .await
        .err(405, "method_not_allowed");
    srv.send(
        srv.http
            .post(srv.url("/v1/sync/push"))
            .bearer_auth(&at)
            .header("content-type", "text/plain")
            .body(body.to_string()),
    )
    .await
    .err(415, "invalid_request");
    srv.send(
        srv.http
            .post(srv.url("/v1/auth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=password&username=a&password={big}")),
    )
    .await
    .err(413, "request_too_large");
    // The connection stays usable, and nothing was applied.
    assert_eq!(srv.pull_ok(&at, "").await["cursor"], 0);
}

/// The resident memory of a process, MiB (`VmRSS` of /proc/<pid>/status).
#[cfg(target_os = "linux")]
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024
}

/// Every sign-in hashes with 19 MiB of Argon2 memory. glibc raised its
/// mmap threshold past that after the first one was freed, so the blocks
/// then stayed in its heap arenas: 200 sign-ins left the server holding
/// over 1 GiB, and it never gave it back (found by the load test).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_give_their_memory_back() {
    if skip_in_cluster("the memory of one process") {
        return;
    }
    let env = Env::new();
    let (name, pw) = env.add_user();
    let srv = Arc::new(env.start(&[]));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (srv, name, pw) = (srv.clone(), name.clone(), pw.clone());
        tasks.spawn(async move {
            for _ in 0..25 {
                srv.login(&name, &pw).await.ok();
            }
        });
    }
    tasks.join_all().await;
    // The server idles at ~10 MiB; a few blocks held at once would be ~80.
    let rss = rss_mib(srv.process().pid());
    assert!(rss < 128, "the server holds {rss} MiB after 100 sign-ins");
}

#[test]
fn cli_backup_copies_a_checked_database_and_never_overwrites() {
    let env = Env::new();
    if on_postgres() {
        // PostgreSQL's own tools back it up: the command says which.
        let to = env.dir().join("backup.db");
        let out = env.cli(&["backup", "--to", to.to_str().unwrap()], None);
        let err = assert_clean_failure(&out, "backup of a PostgreSQL store");
        assert_eq!(said(&err).len(), 1, "{err}");
        assert!(err.contains("pg_dump"), "{err}");
        assert!(!to.exists());
        return;
    }
    let (name, _) = env.add_user();
    let backup = env.dir().join("backup.db");
    let to = backup.to_str().unwrap();
    let out = env.cli(&["backup", "--to", to], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said_out = text(&out.stdout);
    assert!(
        said_out.contains("(users 1, notes 0,") && said_out.contains("checks out"),
        "{said_out}"
    );
    // The copy is a whole database of its own: the user is in it.
    let listed = run(&["user", "list", "--db", to], None);
    assert!(
        text(&listed.stdout).contains(&name),
        "{}",
        text(&listed.stdout)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the copy is private");
    }

    // Into an existing file, or from no database: one clear sentence, and
    // nothing written.
    let before = std::fs::read(&backup).unwrap();
    let out = env.cli(&["backup", "--to", to], None);
    let err = assert_clean_failure(&out, "backup over a file");
    assert_eq!(said(&err).len(), 1, "{err}");
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(std::fs::read(&backup).unwrap(), before);
    let missing = env.dir().join("missing.db");
    let other = env.dir().join("other.db");
    let out = run(
        &[
            "backup",
            "--to",
            other.to_str().unwrap(),
            "--db",
            missing.to_str().unwrap(),
        ],
        None,
    );
    let err = assert_clean_failure(&out, "backup of no database");
    assert_eq!(said(&err).len(), 1, "{err}");
    assert!(err.contains("database"), "{err}");
    assert!(!other.exists() && !missing.exists(), "nothing made");
}

/// Two instances on one database behind nginx with the shipped
/// `deploy/nginx/latchkey-locations.conf`: requests spread over both, a
/// live-updates stream through nginx hears of a push taken by the other
/// instance within seconds, and a push too large is the server's 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_two_instances_share_the_work_and_streams_pass_unbuffered() {
    if skip_in_cluster("it runs instances and nginx of its own") {
        return;
    }
    let env = Env::new();
    let (name, pw) = env.add_user();
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let flags = ["--issuer", &issuer, "--trusted-proxy", "127.0.0.1"];
    let (a, b) = (env.start(&flags), env.start(&flags));
    let nginx = Nginx::start(port, &[a.port(), b.port()]);
    let http = web();
    let url = |path: &str| format!("{}{path}", nginx.url());
    let token: Value = http
        .post(url("/v1/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", &name),
            ("password", &pw),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at = s(&token, "access_token");
    for _ in 0..20 {
        let res = http
            .get(url("/v1/auth/session"))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", nginx.log());
    }
    for (which, server) in [("A", &a), ("B", &b)] {
        let served = server.stderr().matches("/v1/auth/session").count();
        assert!(served >= 5, "instance {which} served {served} of 20");
    }

    // A stream through nginx, and pushes through nginx (either instance).
    let mut stream = http
        .get(url("/v1/sync/events"))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    for round in 1..=4 {
        let pushed = http
            .post(url("/v1/sync/push"))
            .bearer_auth(&at)
            .json(&ops(vec![upsert(&uuid(), &uuid(), 0, "n", "")]))
            .send()
            .await
            .unwrap();
        assert_eq!(pushed.status(), 200);
        let want = format!("{{\"cursor\":{round}}}");
        let mut seen = String::new();
        let started = Instant::now();
        while !seen.contains(&want) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {want} within 5 s; the stream said {seen:?}"))
                .unwrap()
                .expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{round}: {:?}",
            started.elapsed()
        );
    }

    // Over 8 MiB: the server's own 413 with its error body, not nginx's.
    let big = "x".repeat(9 * 1024 * 1024);
    let res = http
        .post(url("/v1/sync/push"))
        .bearer_auth(&at)
        .json(&ops(vec![upsert(&uuid(), &uuid(), 0, "big", &big)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "request_too_large", "{body}");
}

// ------------------------------------------------------- migrate-store

/// The URL of a new database of the private PostgreSQL cluster, with a
/// password in it (the cluster trusts its user: the password is only
/// there to be kept out of every message).
fn pg_url_with_password() -> String {
    let url = PgCluster::shared().database();
    url.replacen(
        "postgres://latchkey@",
        "postgres://latchkey:hunter2-secret@",
        1,
    )
}

/// The rows `migrate-store` said it copied into `table`.
fn rows_copied(said: &str, table: &str) -> u64 {
    let line = said
        .lines()
        .find(|l| l.split_whitespace().next() == Some(table))
        .unwrap_or_else(|| panic!("no line for {table}: {said}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        words.len() == 5 && words[2] == "rows" && words[3] == "sha256" && words[4].len() == 64,
        "{line}"
    );
    words[1].parse().unwrap()
}

/// A password grant from a device that names itself.
async fn sign_in_as(srv: &Server, name: &str, pw: &str, device: &str) -> Value {
    srv.form(
        "/v1/auth/token",
        &[
            ("grant_type", "password"),
            ("username", name),
            ("password", pw),
            ("device_name", device),
        ],
        None,
    )
    .await
    .ok()
    .clone()
}

/// A SQLite server with devices that synced, edited, deleted, made a
/// conflict copy, rotated the signing key, ended a session and spent
/// refresh tokens is stopped and copied into PostgreSQL; a server on the
/// copy with the same issuer then carries every device on: their access
/// and refresh tokens work (no new sign-in), pulls, history and the
/// session list are as before, a push takes the next rev, the ended
/// session stays ended and a spent refresh token is still reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_moves_a_server_to_postgres_and_its_devices_carry_on() {
    if skip_in_cluster("it runs servers of its own") {
        return;
    }
    if !PgCluster::available() {
        println!("skipped: PostgreSQL is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (name, pw) = (unique("user"), password());
    add_user(BIN.as_ref(), &db, &name, &pw);
    let issuer = ["--issuer", "https://notes.example.org"];
    let mut a = Server::start(&db, &issuer, &[]);

    let laptop = sign_in_as(&a, &name, &pw, "laptop").await;
    let mut phone = sign_in_as(&a, &name, &pw, "phone").await;
    let tablet = sign_in_as(&a, &name, &pw, "tablet").await;
    let lost = sign_in_as(&a, &name, &pw, "lost phone").await;
    let laptop_at = s(&laptop, "access_token");

    // Notes: made, edited on another device, deleted, and a stale edit
    // that becomes a conflict copy.
    let (list, todo) = (uuid(), uuid());
    a.push_ok(
        &laptop_at,
        vec![
            upsert(&uuid(), &list, 0, "groceries", "milk"),
            upsert(&uuid(), &todo, 0, "todo", "call"),
        ],
    )
    .await;
    a.push_ok(
        &s(&phone, "access_token"),
        vec![upsert(&uuid(), &list, 1, "groceries", "milk, eggs")],
    )
    .await;
    a.push_ok(&laptop_at, vec![delete(&uuid(), &todo, 2)]).await;
    let stale = a
        .push_ok(
            &laptop_at,
            vec![upsert(&uuid(), &list, 1, "groceries", "milk, bread")],
        )
        .await;
    assert_eq!(stale["results"][0]["status"], "conflict", "{stale}");

    // A new signing key: the phone's next tokens are signed with it.
    let old_kid = s(&jwt_part(&laptop_at, 0), "kid");
    let out = run(&["keys", "rotate", "--db", db.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started = Instant::now();
    while jwt_part(&s(&phone, "access_token"), 0)["kid"] == old_kid.as_str() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still the old key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        phone = a.refresh(&s(&phone, "refresh_token")).await.ok().clone();
    }
    // The tablet's session is ended from the laptop; the lost phone's
    // first refresh token is spent twice over.
    let tablet_sid = s(&tablet, "session_id");
    let ended = a
        .http
        .delete(a.url(&format!("/v1/auth/sessions/{tablet_sid}")))
        .bearer_auth(&laptop_at)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    let lost1 = a.refresh(&s(&lost, "refresh_token")).await.ok().clone();
    a.refresh(&s(&lost1, "refresh_token")).await.ok();

    let pulled = a.pull_ok(&laptop_at, "?since=0&limit=100").await;
    let changes = pulled["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "{pulled}");
    assert!(changes.iter().any(|c| c["conflict_of"] == list.as_str()));
    let history_path = format!("/v1/notes/{list}/history");
    let history = a.get(&history_path, Some(&laptop_at)).await.ok().clone();
    let devices = a
        .get("/v1/auth/sessions", Some(&laptop_at))
        .await
        .ok()
        .clone();
    a.terminate();

    let url = pg_url_with_password();
    let out = run(
        &[
            "migrate-store",
            "--from",
            db.to_str().unwrap(),
            "--to",
            &url,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        !said.contains("hunter2-secret"),
        "the password shown: {said}"
    );
    let copied: Vec<u64> = [
        "users",
        "sessions",
        "refresh_tokens",
        "revocations",
        "signing_keys",
        "notes",
        "note_versions",
        "ops",
        "login_attempts",
    ]
    .iter()
    .map(|table| rows_copied(&said, table))
    .collect();
    // Tokens: 4 sign-ins, the phone's refreshes, the lost phone's 2.
    assert_eq!(&copied[..2], [1, 4], "{said}");
    assert!(copied[2] >= 7, "{said}");
    assert_eq!(&copied[3..], [1, 2, 3, 2, 5, 0], "{said}");
    assert!(said.contains("every table matches the source"), "{said}");

    let b = Server::start(Path::new(&url), &issuer, &[]);
    // Tokens signed before and after the rotation, issued by the old
    // server, are the new one's.
    b.session(&laptop_at).await.ok();
    b.session(&s(&phone, "access_token")).await.ok();
    assert_eq!(b.pull_ok(&laptop_at, "?since=0&limit=100").await, pulled);
    assert_eq!(b.get(&history_path, Some(&laptop_at)).await.ok(), &history);
    assert_eq!(
        b.get("/v1/auth/sessions", Some(&laptop_at)).await.ok(),
        &devices
    );
    // The ended session stays ended; the spent token is reuse.
    let r = b.session(&s(&tablet, "access_token")).await;
    r.unauthorized();
    assert_eq!(r.body["reason"], "revoked");
    let r = b.refresh(&s(&tablet, "refresh_token")).await;
    r.err(400, "invalid_grant");
    assert_eq!(r.body["reason"], "revoked");
    let r = b.refresh(&s(&lost, "refresh_token")).await;
    r.err(400, "invalid_grant");
    assert_eq!(r.body["reason"], "reused");
    // Refreshes go on, pushes take the next rev, sign-ins work.
    let laptop2 = b.refresh(&s(&laptop, "refresh_token")).await.ok().clone();
    let phone2 = b.refresh(&s(&phone, "refresh_token")).await.ok().clone();
    let pushed = b
        .push_ok(
            &s(&phone2, "access_token"),
            vec![upsert(&uuid(), &list, 3, "groceries", "milk, eggs, tea")],
        )
        .await;
    assert_eq!(pushed["cursor"], 6, "{pushed}");
    let next = b.pull_ok(&s(&laptop2, "access_token"), "?since=5").await;
    assert_eq!(next["changes"][0]["body"], "milk, eggs, tea", "{next}");
    sign_in_as(&b, &name, &pw, "new laptop").await;
}

/// A target holding data is refused in one sentence saying what it holds
/// (never the password), and left as it was; `--replace` replaces it.
#[test]
fn migrate_store_refuses_a_target_with_data_unless_told_to_replace_it() {
    if !PgCluster::available() {
        println!("skipped: PostgreSQL is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let first = unique("user");
    add_user(BIN.as_ref(), &db, &first, &password());
    let (from, url) = (db.to_str().unwrap(), pg_url_with_password());
    let out = run(&["migrate-store", "--from", from, "--to", &url], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let second = unique("user");
    add_user(BIN.as_ref(), &db, &second, &password());
    let out = run(&["migrate-store", "--from", from, "--to", &url], None);
    let err = assert_clean_failure(&out, "a target with data");
    assert_eq!(said(&err).len(), 1, "{err}");
    assert!(err.contains("already holds data (users: 1"), "{err}");
    assert!(err.contains("--replace"), "{err}");
    assert!(err.contains("latchkey:***@"), "{err}");
    assert!(!err.contains("hunter2-secret"), "the password shown: {err}");
    let users = text(&run(&["user", "list", "--db", &url], None).stdout);
    assert!(
        users.contains(&first) && !users.contains(&second),
        "{users}"
    );

    // The URL may come from the environment, out of the process list.
    let out = run_env(
        &["migrate-store", "--from", from, "--replace"],
        None,
        &[("LATCHKEY_MIGRATE_TO", &url)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(rows_copied(&text(&out.stdout), "users"), 2);
    let users = text(&run(&["user", "list", "--db", &url], None).stdout);
    assert!(users.contains(&first) && users.contains(&second), "{users}");
}

/// Every way the command cannot run is one sentence, exit code 1, no
/// password, and leaves the source as it was (a missing one is not made).
#[test]
fn migrate_store_bad_input_is_one_clear_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    add_user(BIN.as_ref(), &db, &unique("user"), &password());
    let missing = dir.path().join("missing.db");
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup');")
        .unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, b"not a database at all ".repeat(100)).unwrap();
    let newer = dir.path().join("newer.db");
    std::fs::copy(&db, &newer).unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let port = free_port();
    let unreachable = format!("postgres://latchkey:hunter2-secret@127.0.0.1:{port}/notes");
    let bad_option = format!("{unreachable}?bogus=1");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let before: Vec<Vec<u8>> = [&db, &foreign, &garbage]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();

    for (from, to, expected) in [
        (
            path(&db),
            unreachable.clone(),
            "cannot open the database postgres://latchkey:***@",
        ),
        (path(&db), bad_option, "not a PostgreSQL URL"),
        (path(&db), path(&foreign), "--to must be a PostgreSQL URL"),
        (
            path(&missing),
            unreachable.clone(),
            "cannot open the database",
        ),
        (
            path(&foreign),
            unreachable.clone(),
            "is not a Latchkey server's database",
        ),
        (path(&garbage), unreachable.clone(), "not a database"),
        (
            path(&newer),
            unreachable.clone(),
            "newer than this server's",
        ),
        (
            unreachable.clone(),
            unreachable.clone(),
            "--from names the SQLite database",
        ),
    ] {
        let out = run(&["migrate-store", "--from", &from, "--to", &to], None);
        let err = assert_clean_failure(&out, &format!("{from} -> {to}"));
        assert_eq!(said(&err).len(), 1, "{from} -> {to}: {err}");
        assert!(err.contains(expected), "{from} -> {to}: {err}");
        assert!(!err.contains("hunter2-secret"), "the password shown: {err}");
        assert_eq!(out.status.code(), Some(1), "{err}");
    }
    assert!(!missing.exists(), "a missing source was made");
    let after: Vec<Vec<u8>> = [&db, &foreign, &garbage]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(before == after, "a source was written to");
}
