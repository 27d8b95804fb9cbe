//! Benchmarks 2 and 3 of issue 2, against the release-built
//! `latchkey-server` binary running as a child process on 127.0.0.1:
//!
//! * `session`: authenticated `GET /v1/auth/session` over 64 keep-alive
//!   HTTP/1.1 connections, side by side with a trivial axum handler
//!   (`GET /` -> "ok", served by this same executable re-run as a child).
//!   Two more rows explain the gap: the server's `/healthz` (same process,
//!   same middleware, no bearer check) and the session check on a second
//!   server with the per-request log line off. Targets are measured in
//!   order then in reverse, half the time in each slot, so drift in the
//!   machine's load hits all alike. Target: the session check reaches at
//!   least 50% of the trivial handler's requests per second.
//! * `push`: 10,000 new-note ops in batches of 500, then 10,000 more one op
//!   per request (one connection, sequential, keep-alive), then a pull
//!   that checks all 20,000 notes exist. Target: the batched run under 2 s.
//!
//! `cargo bench -p latchkey-server --bench http [-- OPTIONS]`, options:
//! `--only session|push`, `--secs N` (measuring time per target, default
//! 10), `--warmup N` (default 2), `--connections N` (default 64).
//! `cargo test --benches` builds this and runs nothing.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use latchkey_protocol::{
    ExposeSecret, Op, OpStatus, PullResponse, PushRequest, PushResponse, TokenResponse,
};
use latchkey_testkit::{ServerProcess, Spawn, add_user};
use uuid::Uuid;

/// Set in the environment of the child that serves the trivial handler.
const TRIVIAL_ENV: &str = "LATCHKEY_BENCH_TRIVIAL_SERVER";
const SERVER_BIN: &str = env!("CARGO_BIN_EXE_latchkey-server");
/// A log filter that drops the per-request lines but not the start-up one.
const QUIET_LOG: &str = "warn,latchkey_server::server=info";
const USERNAME: &str = "bench";
const NOTES_PER_RUN: usize = 10_000;
const BATCH: usize = 500;

fn main() -> ExitCode {
    if std::env::var_os(TRIVIAL_ENV).is_some() {
        return report(serve_trivial());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --benches` does not.
    if !args.iter().any(|a| a == "--bench") {
        println!("http bench: not measuring (run it with `cargo bench`)");
        return ExitCode::SUCCESS;
    }
    report(Options::parse(&args).and_then(run))
}

fn report(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    session: bool,
    push: bool,
    secs: u64,
    warmup: u64,
    connections: usize,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut o = Options {
            session: true,
            push: true,
            secs: 10,
            warmup: 2,
            connections: 64,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().context(format!("{arg} needs a value"));
            match arg.as_str() {
                "--only" => match value()?.as_str() {
                    "session" => o.push = false,
                    "push" => o.session = false,
                    other => bail!("--only takes session or push, not {other:?}"),
                },
                "--secs" => o.secs = value()?.parse().context("--secs")?,
                "--warmup" => o.warmup = value()?.parse().context("--warmup")?,
                "--connections" => o.connections = value()?.parse().context("--connections")?,
                // cargo's own flags (--bench) and criterion-style filters.
                _ => {}
            }
        }
        ensure!(
            o.secs >= 2 && o.connections >= 1,
            "--secs >= 2, --connections >= 1"
        );
        Ok(o)
    }
}

fn run(opts: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // On the disk, like a real database (not a tmpfs): fsync costs count.
    let dir = tempfile::Builder::new()
        .prefix("latchkey-bench-")
        .tempdir_in(target_dir())
        .context("making a temporary directory")?;
    let db = dir.path().join("bench.db");
    let password = format!("bench-{}", Uuid::new_v4());
    add_user(SERVER_BIN.as_ref(), &db, USERNAME, &password);
    println!("server binary: {SERVER_BIN}");
    println!(
        "machine: {} cores, load average before: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    if opts.session {
        runtime.block_on(session_bench(&opts, &db, &password, dir.path()))?;
    }
    if opts.push {
        runtime.block_on(push_bench(&db, &password, dir.path()))?;
    }
    println!("load average after: {}", load_average());
    Ok(())
}

/// Benchmark 2: the session check against a trivial handler.
async fn session_bench(
    opts: &Options,
    db: &Path,
    password: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    let trivial = trivial_server(dir)?;
    let server = start_server(db, &dir.join("server.log"), &[])?;
    // The same server without the per-request log line, to show its cost
    // (the line saying where it listens is kept: it is read here).
    let quiet = start_server(db, &dir.join("quiet.log"), &[("LATCHKEY_LOG", QUIET_LOG)])?;
    let token = sign_in(server.addr(), password).await?;
    let quiet_token = sign_in(quiet.addr(), password).await?;
    let targets = [
        Target::new("trivial axum GET /", trivial.addr(), "/", None),
        Target::new(
            "latchkey GET /v1/auth/session",
            server.addr(),
            "/v1/auth/session",
            Some(&token),
        ),
        // The same stack without the bearer check: what verifying the
        // token and looking up its session cost.
        Target::new("  latchkey GET /healthz", server.addr(), "/healthz", None),
        Target::new(
            "  session, request log off",
            quiet.addr(),
            "/v1/auth/session",
            Some(&quiet_token),
        ),
    ];
    for t in &targets {
        let probe = load(t, 1, Duration::ZERO, Duration::from_millis(200)).await;
        ensure!(
            probe.ok > 0 && probe.errors == 0,
            "{} does not answer 200 ({} errors)",
            t.name,
            probe.errors
        );
    }

    let half = Duration::from_millis(opts.secs * 500);
    let warmup = Duration::from_secs(opts.warmup);
    let mut results: Vec<Stats> = targets.iter().map(|_| Stats::default()).collect();
    // In order, then in reverse: each target measured twice, half the time
    // each, so drift in the machine's load hits every target alike.
    let order: Vec<usize> = (0..targets.len()).chain((0..targets.len()).rev()).collect();
    for (round, &i) in order.iter().enumerate() {
        let warm = if round < targets.len() {
            warmup
        } else {
            Duration::ZERO
        };
        let stats = load(&targets[i], opts.connections, warm, half).await;
        results[i].merge(stats);
    }

    println!();
    println!(
        "## GET on loopback, {} keep-alive HTTP/1.1 connections, {} s per target",
        opts.connections, opts.secs
    );
    println!(
        "{:<32} {:>10} {:>8} {:>9} {:>9} {:>9} {:>7}",
        "target", "req/s", "ratio", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    let base = results[0].rate();
    for (t, s) in targets.iter().zip(&mut results) {
        let rate = s.rate();
        s.latencies.sort_unstable();
        println!(
            "{:<32} {:>10.0} {:>7.1}% {:>9.3} {:>9.3} {:>9.3} {:>7}",
            t.name,
            rate,
            100.0 * rate / base,
            s.percentile(50.0),
            s.percentile(99.0),
            s.percentile(99.9),
            s.errors
        );
    }
    let ratio = results[1].rate() / base;
    let errors: u64 = results.iter().map(|s| s.errors).sum();
    println!(
        "target: session >= 50% of trivial: {} ({:.1}%), errors: {errors}",
        if ratio >= 0.5 { "met" } else { "MISSED" },
        100.0 * ratio
    );
    ensure!(errors == 0, "{errors} requests failed");
    for mut p in [trivial, server, quiet] {
        p.terminate();
    }
    Ok(())
}

/// Benchmark 3: 10,000 new notes in batches of 500, then one per request.
async fn push_bench(db: &Path, password: &str, dir: &Path) -> anyhow::Result<()> {
    let mut server = start_server(db, &dir.join("push.log"), &[])?;
    let token = sign_in(server.addr(), password).await?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}"))?;
    let mut conn = Conn::open(server.addr()).await?;

    let batched_ids = fresh_note_ids();
    let started = Instant::now();
    for chunk in batched_ids.chunks(BATCH) {
        push(&mut conn, &auth, chunk).await?;
    }
    let batched = started.elapsed();

    let single_ids = fresh_note_ids();
    let started = Instant::now();
    for id in &single_ids {
        push(&mut conn, &auth, std::slice::from_ref(id)).await?;
    }
    let single = started.elapsed();

    let started = Instant::now();
    let mut pulled = pull_all(&mut conn, &auth).await?;
    let pull_time = started.elapsed();
    let mut expected: Vec<Uuid> = batched_ids.into_iter().chain(single_ids).collect();
    expected.sort_unstable();
    pulled.sort_unstable();
    ensure!(
        pulled == expected,
        "the pull returned {} notes, not the {} pushed",
        pulled.len(),
        expected.len()
    );

    println!();
    println!("## POST /v1/sync/push, {NOTES_PER_RUN} new notes each way, one connection");
    let per = |d: Duration| d.as_secs_f64() * 1e6 / NOTES_PER_RUN as f64;
    println!(
        "batches of {BATCH}:     {:>8.3} s  ({:.1} us/op, {:.0} ops/s)",
        batched.as_secs_f64(),
        per(batched),
        NOTES_PER_RUN as f64 / batched.as_secs_f64()
    );
    println!(
        "one op per request: {:>8.3} s  ({:.1} us/op, {:.0} ops/s)",
        single.as_secs_f64(),
        per(single),
        NOTES_PER_RUN as f64 / single.as_secs_f64()
    );
    println!(
        "ratio single/batched: {:.1}x; pull of all {} notes checked in {:.3} s",
        single.as_secs_f64() / batched.as_secs_f64(),
        expected.len(),
        pull_time.as_secs_f64()
    );
    // The server logs how long it spent on each request: the rest of the
    // wall time is the client, loopback and scheduling.
    let micros = logged_micros(&dir.join("push.log"), "/v1/sync/push");
    if micros.len() == NOTES_PER_RUN / BATCH + NOTES_PER_RUN {
        let (batched, mut single) = (
            &micros[..NOTES_PER_RUN / BATCH],
            micros[NOTES_PER_RUN / BATCH..].to_vec(),
        );
        let sum = |m: &[u64]| m.iter().sum::<u64>() as f64 / 1e6;
        let total_single = sum(&single);
        single.sort_unstable();
        println!(
            "server-side time (its log's micros): batched {:.3} s, one op per request {:.3} s \
             (median {} us, p99 {} us per request)",
            sum(batched),
            total_single,
            single[single.len() / 2],
            single[single.len() * 99 / 100]
        );
    }
    println!(
        "target: batched under 2 s: {}",
        if batched < Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );
    server.terminate();
    Ok(())
}

/// The `micros=` of each logged request to `path`, in order.
fn logged_micros(log: &Path, path: &str) -> Vec<u64> {
    let path = format!("path={path} ");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&path))
        .filter_map(|line| {
            line.split("micros=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn fresh_note_ids() -> Vec<Uuid> {
    (0..NOTES_PER_RUN).map(|_| Uuid::now_v7()).collect()
}

async fn push(conn: &mut Conn, auth: &HeaderValue, notes: &[Uuid]) -> anyhow::Result<()> {
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
async fn pull_all(conn: &mut Conn, auth: &HeaderValue) -> anyhow::Result<Vec<Uuid>> {
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

/// One load target.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    path: &'static str,
    auth: Option<HeaderValue>,
}

impl Target {
    fn new(name: &'static str, addr: SocketAddr, path: &'static str, token: Option<&str>) -> Self {
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
struct Stats {
    ok: u64,
    errors: u64,
    measured: Duration,
    /// Latency of each request that completed inside the window, in µs.
    latencies: Vec<u32>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.measured += other.measured;
        self.latencies.extend(other.latencies);
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64()
    }

    /// In milliseconds; `latencies` must be sorted.
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p / 100.0) as usize).min(self.latencies.len() - 1);
        f64::from(self.latencies[i]) / 1000.0
    }
}

/// `connections` clients, each sending one request after the other on its
/// own keep-alive connection, for `warmup` (not counted) then `measure`.
/// Errors are counted over the whole run, warm-up included.
async fn load(target: &Target, connections: usize, warmup: Duration, measure: Duration) -> Stats {
    let from = Instant::now() + warmup;
    let until = from + measure;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (addr, path, auth) = (target.addr, target.path, target.auth.clone());
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
                let outcome = c.send(Method::GET, path, auth.as_ref(), None).await;
                let done = Instant::now();
                match outcome {
                    Ok((StatusCode::OK, _)) => {
                        if started >= from && done <= until {
                            stats.ok += 1;
                            stats.latencies.push(
                                u32::try_from((done - started).as_micros()).unwrap_or(u32::MAX),
                            );
                        }
                        conn = Some(c);
                    }
                    Ok(_) => {
                        stats.errors += 1;
                        conn = Some(c);
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
struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        ensure!(addr.ip().is_loopback(), "only ever talk to loopback");
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { addr, sender })
    }

    async fn send(
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
        self.sender.ready().await?;
        let res = self.sender.send_request(req.body(body)?).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

/// Signs `bench` in with the password grant; returns the access token.
async fn sign_in(addr: SocketAddr, password: &str) -> anyhow::Result<String> {
    let mut conn = Conn::open(addr).await?;
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "password")
        .append_pair("username", USERNAME)
        .append_pair("password", password)
        .finish();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/auth/token")
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))?;
    conn.sender.ready().await?;
    let res = conn.sender.send_request(req).await?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    ensure!(status == StatusCode::OK, "sign-in answered {status}");
    let tokens: TokenResponse = serde_json::from_slice(&bytes)?;
    Ok(tokens.access_token.expose_secret().to_owned())
}

/// `latchkey-server serve` on a free loopback port, its log in `log`.
fn start_server(db: &Path, log: &Path, env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
    Spawn::serve(db)
        .bin(SERVER_BIN)
        .envs(env.iter().copied())
        .log_to(log)
        .try_start()
        .map_err(anyhow::Error::msg)
}

/// This executable, re-run to serve the trivial handler; it exits when
/// its stdin closes, whatever happens here.
fn trivial_server(dir: &Path) -> anyhow::Result<ServerProcess> {
    Spawn::program(std::env::current_exe()?)
        .env(TRIVIAL_ENV, "1")
        .keep_stdin()
        .log_to(dir.join("trivial.log"))
        .try_start()
        .map_err(anyhow::Error::msg)
}

/// The trivial handler: `GET /` -> "ok", on the same runtime flavour as
/// the server (multi-threaded, one worker per core).
fn serve_trivial() -> anyhow::Result<()> {
    std::thread::spawn(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        eprintln!(
            "trivial server listening on http://{}",
            listener.local_addr()?
        );
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// The directory cargo builds into (this bench runs from `<it>/release/deps`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_owned()))
        .unwrap_or_else(std::env::temp_dir)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
