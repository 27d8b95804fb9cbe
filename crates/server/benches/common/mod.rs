//! What the server's benchmarks share: a keep-alive HTTP/1.1 client
//! connection to loopback, a closed-loop load of many connections with its
//! statistics, sign-in, push and pull, and the release server as a child
//! process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::ensure;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use latchkey_protocol::{
    ExposeSecret, Op, OpStatus, PullResponse, PushRequest, PushResponse, TokenResponse,
};
use latchkey_testkit::{ServerProcess, Spawn};
use uuid::Uuid;

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_latchkey-server");
pub const USERNAME: &str = "bench";

/// One load target.
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub path: &'static str,
    pub auth: Option<HeaderValue>,
}

impl Target {
    pub fn new(
        name: &'static str,
        addr: SocketAddr,
        path: &'static str,
        token: Option<&str>,
    ) -> Self {
        let auth = token.map(|t| {
            HeaderValue::from_str(&format!("Bearer {t}")).expect("a token is header-safe")
        });
        Self {
            name,
            addr,
            path,
            auth,
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub ok: u64,
    pub errors: u64,
    pub measured: Duration,
    /// Latency of each request that completed inside the window, in µs.
    pub latencies: Vec<u32>,
}

impl Stats {
    pub fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.measured += other.measured;
        self.latencies.extend(other.latencies);
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64()
    }

    /// In milliseconds; `latencies` must be sorted.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p / 100.0) as usize).min(self.latencies.len() - 1);
        f64::from(self.latencies[i]) / 1000.0
    }
}

/// What one connection of a closed loop does, over and over.
pub trait Step: Send + 'static {
    /// One request; whether it was answered as hoped (200).
    fn once(&mut self, conn: &mut Conn) -> impl Future<Output = anyhow::Result<bool>> + Send;
}

/// A GET of a target.
#[derive(Clone)]
struct Get {
    path: &'static str,
    auth: Option<HeaderValue>,
}

impl Step for Get {
    async fn once(&mut self, conn: &mut Conn) -> anyhow::Result<bool> {
        let (status, _) = conn
            .send(Method::GET, self.path, self.auth.as_ref(), None)
            .await?;
        Ok(status == StatusCode::OK)
    }
}

/// `connections` clients, each sending one GET of `target` after the
/// other on its own keep-alive connection, for `warmup` (not counted) then
/// `measure`.
pub async fn load(
    target: &Target,
    connections: usize,
    warmup: Duration,
    measure: Duration,
) -> Stats {
    let get = Get {
        path: target.path,
        auth: target.auth.clone(),
    };
    closed_loop(target.addr, vec![get; connections], warmup, measure).await
}

/// One client per step, each doing its step over and over on its own
/// keep-alive connection to `addr`, for `warmup` (not counted) then
/// `measure`. Errors are counted over the whole run, warm-up included.
pub async fn closed_loop<S: Step>(
    addr: SocketAddr,
    steps: Vec<S>,
    warmup: Duration,
    measure: Duration,
) -> Stats {
    let from = Instant::now() + warmup;
    let until = from + measure;
    let mut tasks = tokio::task::JoinSet::new();
    for mut step in steps {
        tasks.spawn(async move {
            let mut stats = Stats::default();
            let mut conn = None;
            while Instant::now() < until {
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => match Conn::open(addr).await {
                        Ok(c) => c,
                        Err(_) => {
                            stats.errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let started = Instant::now();
                let outcome = step.once(&mut c).await;
                let done = Instant::now();
                match outcome {
                    Ok(true) => {
                        if started >= from && done <= until {
                            stats.ok += 1;
                            stats.latencies.push(
                                u32::try_from((done - started).as_micros()).unwrap_or(u32::MAX),
                            );
                        }
                        conn = c.reusable().then_some(c);
                    }
                    Ok(false) => {
                        stats.errors += 1;
                        conn = c.reusable().then_some(c);
                    }
                    Err(_) => stats.errors += 1,
                }
            }
            stats
        });
    }
    let mut total = Stats::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(stats) => total.merge(stats),
            Err(_) => total.errors += 1,
        }
    }
    total.measured = measure;
    total
}

/// One keep-alive HTTP/1.1 client connection.
pub struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    /// The peer said `Connection: close` (nginx does after
    /// `keepalive_requests`, 1,000 by default).
    closing: bool,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        ensure!(addr.ip().is_loopback(), "only ever talk to loopback");
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            addr,
            sender,
            closing: false,
        })
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        json: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string());
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let body = match json {
            Some(json) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::default(),
        };
        self.exchange(req.body(body)?).await
    }

    /// POSTs a form (`application/x-www-form-urlencoded`) to `path`.
    pub async fn send_form(
        &mut self,
        path: &str,
        form: String,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.addr.to_string())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))?;
        self.exchange(req).await
    }

    /// Whether another request may go on this connection: a client opens a
    /// new one when the peer closes it after an answer, as browsers and
    /// `reqwest` do, and that is no error.
    pub fn reusable(&self) -> bool {
        !self.closing && !self.sender.is_closed()
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        self.closing = res
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

/// Signs `bench` in with the password grant; returns the access token.
pub async fn sign_in(addr: SocketAddr, password: &str) -> anyhow::Result<String> {
    let mut conn = Conn::open(addr).await?;
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "password")
        .append_pair("username", USERNAME)
        .append_pair("password", password)
        .finish();
    let (status, bytes) = conn.send_form("/v1/auth/token", form).await?;
    ensure!(status == StatusCode::OK, "sign-in answered {status}");
    let tokens: TokenResponse = serde_json::from_slice(&bytes)?;
    Ok(tokens.access_token.expose_secret().to_owned())
}

/// `latchkey-server serve` on a free loopback port, its log in `log`.
pub fn start_server(db: &Path, log: &Path, env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
    Spawn::serve(db)
        .bin(SERVER_BIN)
        .envs(env.iter().copied())
        .log_to(log)
        .try_start()
        .map_err(anyhow::Error::msg)
}

/// The directory cargo builds into (this bench runs from `<it>/release/deps`).
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_owned()))
        .unwrap_or_else(std::env::temp_dir)
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn push(conn: &mut Conn, auth: &HeaderValue, notes: &[Uuid]) -> anyhow::Result<()> {
    let client_time = latchkey_server::now();
    let ops = notes
        .iter()
        .map(|&note_id| Op::Upsert {
            op_id: Uuid::now_v7(),
            note_id,
            base_rev: 0,
            title: "Groceries".into(),
            body: "eggs, milk, a loaf of bread and some coffee".into(),
            client_time,
            conflict_of: None,
        })
        .collect();
    let body = serde_json::to_vec(&PushRequest { ops })?;
    let (status, bytes) = conn
        .send(Method::POST, "/v1/sync/push", Some(auth), Some(body))
        .await?;
    ensure!(status == StatusCode::OK, "push answered {status}");
    let answer: PushResponse = serde_json::from_slice(&bytes)?;
    ensure!(
        answer.results.len() == notes.len()
            && answer.results.iter().all(|r| r.status == OpStatus::Applied),
        "not every op was applied"
    );
    Ok(())
}

/// Every note id the user has, pulled page by page.
pub async fn pull_all(conn: &mut Conn, auth: &HeaderValue) -> anyhow::Result<Vec<Uuid>> {
    let mut since = 0;
    let mut ids = Vec::new();
    loop {
        let path = format!("/v1/sync/pull?since={since}&limit=1000");
        let (status, bytes) = conn.send(Method::GET, &path, Some(auth), None).await?;
        ensure!(status == StatusCode::OK, "pull answered {status}");
        let page: PullResponse = serde_json::from_slice(&bytes)?;
        ids.extend(
            page.changes
                .iter()
                .filter(|c| !c.deleted)
                .map(|c| c.note_id),
        );
        ensure!(page.cursor >= since, "the pull cursor went backwards");
        since = page.cursor;
        if !page.more {
            return Ok(ids);
        }
    }
}
