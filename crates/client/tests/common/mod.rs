//! Shared test helpers: the real `latchkey-server` process on 127.0.0.1, a
//! counting / fault-injecting transport, and engine builders.
#![allow(dead_code)]

pub mod proxy;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use latchkey_client::http::{HttpRequest, HttpResponse};
use latchkey_client::{
    Clock, Config, Engine, Http, MemoryVault, ReqwestHttp, SessionState, Status, SystemClock, Vault,
};

/// The server binary, built once per test run (the client never links it).
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> -> target/<profile>/latchkey-server
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let mut build = Command::new(env!("CARGO"));
        build.args([
            "build",
            "--quiet",
            "-p",
            "latchkey-server",
            "--bin",
            "latchkey-server",
        ]);
        // A test built with --release runs the release server, not a stale one.
        if profile_dir.file_name() == Some("release".as_ref()) {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building latchkey-server failed");
        profile_dir.join("latchkey-server")
    })
    .clone()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real server process on a fixed port (so it can be restarted in place).
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub extra: Vec<String>,
    child: Option<Child>,
}

impl TestServer {
    pub fn start(extra: &[&str]) -> Self {
        let mut s = TestServer {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        s.restart();
        s
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("server.db")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (again) and waits until it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(server_bin())
            .arg("serve")
            .arg("--addr")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--db")
            .arg(self.db())
            .args(&self.extra)
            .env("LATCHKEY_LOG", "warn,latchkey_server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start latchkey-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("listening on") {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the server did not start listening");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = Command::new(server_bin())
            .args(args)
            .arg("--db")
            .arg(self.db())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    pub fn add_user(&self, name: &str, password: &str) {
        let out = self.cli(
            &["user", "add", "--username", name, "--password-stdin"],
            Some(&format!("{password}\n")),
        );
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn revoke_user(&self, name: &str) {
        let out = self.cli(&["session", "revoke", "--username", name], None);
        assert!(
            out.status.success(),
            "session revoke: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub fn signal(pid: u32, sig: &str) {
    unsafe_signal(pid, sig);
}

fn unsafe_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The notes on the server, as another session of `user` sees them (title, body).
pub async fn server_notes(url: &str, user: &str, password: &str) -> Vec<(String, String, bool)> {
    server_changes(url, user, password)
        .await
        .into_iter()
        .filter(|c| !c.deleted)
        .map(|c| (c.title, c.body, c.deleted))
        .collect()
}

/// A plain HTTP client for the tests' own calls to the server (rustls on
/// ring, the workspace's one crypto provider, installed first).
pub fn web() -> reqwest::Client {
    latchkey_client::http::install_tls_provider();
    reqwest::Client::new()
}

/// An access token of a new session of `user` (password grant).
pub async fn access_token(http: &reqwest::Client, url: &str, user: &str, password: &str) -> String {
    let tok: serde_json::Value = http
        .post(format!("{url}/v1/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tok["access_token"].as_str().unwrap().to_string()
}

/// Revokes every session of `user` with the CLI and returns once the
/// running server refuses them (it picks up other processes' revocations
/// within a second): a session made just before is polled until it is.
pub async fn revoke_user_now(server: &TestServer, user: &str, password: &str) {
    let (url, http) = (server.url(), web());
    let probe = access_token(&http, &url, user, password).await;
    server.revoke_user(user);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = http
            .get(format!("{url}/v1/auth/session"))
            .bearer_auth(&probe)
            .send()
            .await
            .unwrap();
        if res.status() == 401 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server still honours {user}'s sessions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every note of `user` on the server (tombstones included), whole, in
/// note id order.
pub async fn server_changes(
    url: &str,
    user: &str,
    password: &str,
) -> Vec<latchkey_protocol::Change> {
    let http = web();
    let at = access_token(&http, url, user, password).await;
    let mut since = 0;
    let mut notes = std::collections::BTreeMap::new();
    loop {
        let page: latchkey_protocol::PullResponse = http
            .get(format!("{url}/v1/sync/pull?since={since}&limit=1000"))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for c in page.changes {
            notes.insert(c.note_id, c);
        }
        since = page.cursor;
        if !page.more {
            break;
        }
    }
    notes.into_values().collect()
}

/// A transport that counts requests by path and can fail them on purpose.
#[derive(Clone)]
pub struct TestHttp {
    inner: ReqwestHttp,
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Drop the response of the next N refresh grants (the server has
    /// applied them; the client never hears back).
    pub lose_refresh_responses: Arc<AtomicUsize>,
    /// Drop the response of the next N pushes (applied, never answered).
    pub lose_push_responses: Arc<AtomicUsize>,
    /// Make every request fail as if the network were gone.
    pub down: Arc<std::sync::atomic::AtomicBool>,
    /// A script for the next requests, one step each, in order (an empty
    /// script lets everything through).
    pub plan: Arc<Mutex<std::collections::VecDeque<Fault>>>,
    /// How many `Fail` and `LoseResponse` steps of `plan` have happened.
    pub faults_injected: Arc<AtomicUsize>,
    /// Requests to these paths (e.g. `healthz`) fail as if the network were
    /// gone; they take no step of `plan`.
    pub unreachable: Arc<Mutex<Vec<String>>>,
    /// The next request to each of these paths fails as if the network
    /// were gone (once per entry).
    pub fail_once: Arc<Mutex<Vec<String>>>,
    /// Pushes over this many bytes are refused with 413, as by a proxy
    /// with a lower limit than the server's (0: no limit).
    pub push_limit: Arc<AtomicUsize>,
}

/// One step of [`TestHttp::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request goes through untouched.
    Pass,
    /// The request fails before it leaves: the server never sees it.
    Fail,
    /// The server handles the request; its answer is lost on the way back.
    LoseResponse,
}

impl TestHttp {
    pub fn new() -> Self {
        Self {
            inner: ReqwestHttp::new(Duration::from_secs(2)).unwrap(),
            calls: Arc::default(),
            lose_refresh_responses: Arc::default(),
            lose_push_responses: Arc::default(),
            down: Arc::default(),
            plan: Arc::default(),
            faults_injected: Arc::default(),
            unreachable: Arc::default(),
            fail_once: Arc::default(),
            push_limit: Arc::default(),
        }
    }

    pub fn count(&self, what: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.as_str() == what)
            .count()
    }
}

#[async_trait]
impl Http for TestHttp {
    async fn send(&self, req: HttpRequest) -> latchkey_client::Result<HttpResponse> {
        if self.down.load(Ordering::SeqCst) {
            return Err(latchkey_client::Error::Network {
                detail: "test network down".into(),
            });
        }
        let path = req
            .url
            .splitn(4, '/')
            .nth(3)
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_string();
        let refresh = path == "v1/auth/token"
            && String::from_utf8_lossy(&req.body).contains("grant_type=refresh_token");
        let push = path == "v1/sync/push";
        let unreachable = self.unreachable.lock().unwrap().contains(&path);
        let once = {
            let mut once = self.fail_once.lock().unwrap();
            once.iter()
                .position(|p| *p == path)
                .map(|i| once.remove(i))
                .is_some()
        };
        self.calls
            .lock()
            .unwrap()
            .push(if refresh { "refresh".into() } else { path });
        if unreachable || once {
            return Err(latchkey_client::Error::Network {
                detail: "test made this path unreachable".into(),
            });
        }
        let limit = self.push_limit.load(Ordering::SeqCst);
        if push && limit > 0 && req.body.len() > limit {
            return Ok(HttpResponse {
                status: 413,
                body: br#"{"error":"request_too_large","error_description":"over the test proxy's limit"}"#.to_vec(),
                date: None,
                retry_after: None,
            });
        }
        let step = self.plan.lock().unwrap().pop_front();
        if step == Some(Fault::Fail) {
            self.faults_injected.fetch_add(1, Ordering::SeqCst);
            return Err(latchkey_client::Error::Network {
                detail: "test failed the request".into(),
            });
        }
        let res = self.inner.send(req).await?;
        if step == Some(Fault::LoseResponse) {
            self.faults_injected.fetch_add(1, Ordering::SeqCst);
            return Err(latchkey_client::Error::Network {
                detail: "test lost the response".into(),
            });
        }
        if push
            && self
                .lose_push_responses
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(latchkey_client::Error::Network {
                detail: "test lost the response".into(),
            });
        }
        if refresh
            && self
                .lose_refresh_responses
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(latchkey_client::Error::Network {
                detail: "test lost the response".into(),
            });
        }
        Ok(res)
    }
}

/// The password of the tests' users.
pub const PW: &str = "correct horse battery staple";

/// A new engine on `dir`, signed in as `user` (password [`PW`]).
pub async fn signed_in(
    server: &TestServer,
    dir: &std::path::Path,
    vault: &MemoryVault,
    http: &TestHttp,
    user: &str,
) -> Engine {
    let e = engine(dir, vault, http).await;
    e.sign_in(&server.url(), user, PW).await.expect("sign in");
    e
}

/// Fast timings for tests.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.heartbeat = Duration::from_millis(200);
    c.sync_interval = Duration::from_secs(2);
    c.edit_debounce = Duration::from_millis(100);
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(500);
    c.timeouts.probe = Duration::from_secs(1);
    c.timeouts.request = Duration::from_secs(5);
    c
}

pub async fn engine_with(
    dir: &std::path::Path,
    vault: &MemoryVault,
    http: &TestHttp,
    clock: Arc<dyn Clock>,
) -> Engine {
    Engine::start(
        test_config(dir),
        Arc::new(vault.clone()) as Arc<dyn Vault>,
        Arc::new(http.clone()),
        clock,
    )
    .await
    .unwrap()
}

pub async fn engine(dir: &std::path::Path, vault: &MemoryVault, http: &TestHttp) -> Engine {
    engine_with(dir, vault, http, Arc::new(SystemClock)).await
}

/// Waits (up to `secs`) until the status satisfies `pred`.
pub async fn wait_for(
    engine: &Engine,
    secs: u64,
    what: &str,
    pred: impl Fn(&Status) -> bool,
) -> Status {
    let mut rx = engine.subscribe();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = rx.borrow_and_update().clone();
        if pred(&st) {
            return st;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}; last status: {st:?}");
        }
    }
}

pub async fn wait_state(engine: &Engine, state: SessionState, secs: u64) -> Status {
    wait_for(engine, secs, &format!("{state:?}"), |s| s.state == state).await
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
