//! Load and soak (issue 5, item 6): 200 real engines, each with its own data
//! directory, keychain (`MemoryVault`) and HTTP connection pool, against one
//! real `latchkey-server` process on 127.0.0.1. Every client signs in, then
//! for the measured window edits (new notes, edits, a few deletes), lets its
//! engine sync in the background, syncs on demand, refreshes (the server's
//! access tokens live 30 s, so every client refreshes every ~25 s) and now
//! and then signs out and in again. 60 seconds by default; `LATCHKEY_LONG=1`
//! runs 10 minutes (`bash scripts/reliability.sh load`, release build).
//! With `LATCHKEY_TEST_SERVERS=3` the server is three instances on one
//! PostgreSQL database behind nginx (the testkit's `TestServer`), and its
//! figures are the sums over the three processes.
//!
//! Asserted (behaviour): no failed request, no failed sync, every edit on
//! the server exactly once at the end, and the server's open file
//! descriptors not growing without bound. Printed (figures, never
//! asserted): requests by kind, push latency p50/p99, the server's RSS,
//! descriptors and CPU at start and end, load average.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use latchkey_client::http::{HttpRequest, HttpResponse};
use latchkey_client::{Config, Engine, Http, ReqwestHttp, SystemClock, Vault, VaultEntry};
use latchkey_protocol::ExposeSecret;
use latchkey_testkit::*;
use rand::Rng as _;
use uuid::Uuid;

const CLIENTS: usize = 200;
const PW: &str = "load and soak password";
/// Server access tokens live this long, so refreshes happen all the time.
const ACCESS_TTL: &str = "30s";
/// Sign-ins (Argon2 on the server) at once during the warm-up.
const SIGN_IN_AT_ONCE: usize = 6;

fn long() -> bool {
    std::env::var("LATCHKEY_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------- counting

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Healthz,
    Metadata,
    Jwks,
    SignIn,
    Refresh,
    Revoke,
    Session,
    Push,
    Pull,
    Other,
}

const KINDS: [(Kind, &str); 10] = [
    (Kind::Healthz, "healthz"),
    (Kind::Metadata, "metadata"),
    (Kind::Jwks, "jwks"),
    (Kind::SignIn, "sign-in (password grant)"),
    (Kind::Refresh, "refresh (refresh grant)"),
    (Kind::Revoke, "revoke (sign-out)"),
    (Kind::Session, "session check"),
    (Kind::Push, "push"),
    (Kind::Pull, "pull"),
    (Kind::Other, "other"),
];

fn kind_of(req: &HttpRequest) -> Kind {
    let path = req.url.splitn(4, '/').nth(3).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    match path {
        "healthz" => Kind::Healthz,
        ".well-known/oauth-authorization-server" => Kind::Metadata,
        ".well-known/jwks.json" => Kind::Jwks,
        "v1/auth/token" if req.body.starts_with(b"grant_type=refresh_token") => Kind::Refresh,
        "v1/auth/token" => Kind::SignIn,
        "v1/auth/revoke" => Kind::Revoke,
        "v1/auth/session" => Kind::Session,
        "v1/sync/push" => Kind::Push,
        "v1/sync/pull" => Kind::Pull,
        _ => Kind::Other,
    }
}

/// Phases: requests are counted per phase.
const WARM_UP: usize = 0;
const MEASURED: usize = 1;
const DRAIN: usize = 2;

/// What every transport of the run adds to.
#[derive(Default)]
struct Figures {
    phase: AtomicUsize,
    counts: [[AtomicU64; KINDS.len()]; 3],
    /// Failed requests and syncs: any transport error, any non-2xx that is
    /// not an expected protocol answer, any sync ending in an error.
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// 401 for an expired access token (the engine refreshes and retries).
    expired_401: AtomicU64,
    /// 401 for a session the client itself had just signed out of.
    after_sign_out_401: AtomicU64,
    /// Push round trips in the measured window, microseconds.
    push_micros: Mutex<Vec<u32>>,
    explicit_syncs: AtomicU64,
    sign_in_cycles: AtomicU64,
}

impl Figures {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut f = self.failures.lock().unwrap();
        if f.len() < 30 {
            f.push(what);
        }
    }

    fn count(&self, phase: usize, kind: Kind) -> u64 {
        let i = KINDS.iter().position(|(k, _)| *k == kind).unwrap();
        self.counts[phase][i].load(Ordering::SeqCst)
    }
}

/// One client's transport: the real one (its own connection pool), counted.
struct LoadHttp {
    inner: ReqwestHttp,
    figures: Arc<Figures>,
    /// Set while this client signs out and in again: a 401 for the session
    /// it is ending is then the expected answer.
    signing_out: Arc<AtomicBool>,
}

#[async_trait]
impl Http for LoadHttp {
    async fn send(&self, req: HttpRequest) -> latchkey_client::Result<HttpResponse> {
        let kind = kind_of(&req);
        let phase = self.figures.phase.load(Ordering::SeqCst);
        let i = KINDS.iter().position(|(k, _)| *k == kind).unwrap();
        self.figures.counts[phase][i].fetch_add(1, Ordering::SeqCst);
        let name = KINDS[i].1;
        let started = Instant::now();
        let res = self.inner.send(req).await;
        let took = started.elapsed();
        match &res {
            Err(e) => self.figures.fail(format!("{name}: {e}")),
            Ok(r) if (200..300).contains(&r.status) => {
                if kind == Kind::Push && phase == MEASURED {
                    let us = took.as_micros().min(u32::MAX as u128) as u32;
                    self.figures.push_micros.lock().unwrap().push(us);
                }
            }
            Ok(r) if r.status == 401 && self.signing_out.load(Ordering::SeqCst) => {
                self.figures
                    .after_sign_out_401
                    .fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) if r.status == 401 && reason(r).as_deref() == Some("expired") => {
                self.figures.expired_401.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => {
                let body: String = String::from_utf8_lossy(&r.body).chars().take(200).collect();
                self.figures.fail(format!("{name}: {} {body}", r.status));
            }
        }
        res
    }
}

fn reason(r: &HttpResponse) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    v.get("reason")?.as_str().map(str::to_owned)
}

// ---------------------------------------------------------- the server's figures

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    /// Descriptors on the database file: one per open SQLite connection.
    db_fds: usize,
    cpu_secs: f64,
    load1: f64,
}

/// The server's figures: summed over its processes when several instances
/// run behind nginx (`LATCHKEY_TEST_SERVERS`).
fn sample(pids: &[u32], at: Duration) -> Sample {
    let mut total = Sample {
        at,
        rss_kib: 0,
        fds: 0,
        db_fds: 0,
        cpu_secs: 0.0,
        load1: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0),
    };
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        total.rss_kib += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("VmRSS in /proc/<pid>/status");
        let links: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .collect();
        total.fds += links.len();
        total.db_fds += links.iter().filter(|l| l.ends_with("server.db")).count();
        // utime and stime: fields 14 and 15, counted after the ")" of the
        // name.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        total.cpu_secs += ticks as f64 / 100.0;
    }
    total
}

// ---------------------------------------------------------------- a client

struct Client {
    n: usize,
    vault: MemoryVault,
    url: String,
    user: String,
    engine: Engine,
    signing_out: Arc<AtomicBool>,
    /// The notes as this client last wrote them: id -> (title, body).
    notes: BTreeMap<Uuid, (String, String)>,
    created: u32,
    edits: u64,
}

impl Client {
    async fn save(&mut self, figures: &Figures, id: Option<Uuid>, title: String, body: String) {
        match self
            .engine
            .save_note(id, None, title.clone(), body.clone())
            .await
        {
            Ok(note) => {
                self.notes.insert(note.id, (title, body));
                self.edits += 1;
            }
            Err(e) => figures.fail(format!("client {}: save: {e}", self.n)),
        }
    }

    fn body(&self, title: &str, rng: &mut impl rand::Rng) -> String {
        let filler = "lorem ipsum dolor sit amet ".repeat(rng.gen_range(1..40));
        format!("{title} edit {}\n{filler}", self.edits)
    }

    /// One user action, after a pause to think.
    async fn act(&mut self, figures: &Figures) {
        let (roll, pick) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(0..100u32), rng.r#gen::<usize>())
        };
        let existing = (!self.notes.is_empty())
            .then(|| *self.notes.keys().nth(pick % self.notes.len()).unwrap());
        match (roll, existing) {
            (0..40, _) | (40..88, None) => {
                self.created += 1;
                let title = format!("c{} n{}", self.n, self.created);
                let body = self.body(&title, &mut rand::thread_rng());
                self.save(figures, None, title, body).await;
            }
            (40..85, Some(id)) => {
                let title = self.notes[&id].0.clone();
                let body = self.body(&title, &mut rand::thread_rng());
                self.save(figures, Some(id), title, body).await;
            }
            (85..88, Some(id)) => match self.engine.delete_note(id).await {
                Ok(()) => {
                    self.notes.remove(&id);
                    self.edits += 1;
                }
                Err(e) => figures.fail(format!("client {}: delete: {e}", self.n)),
            },
            (88..98, _) => {
                figures.explicit_syncs.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = self.engine.sync_now().await {
                    figures.fail(format!("client {}: sync: {e}", self.n));
                }
            }
            _ => self.sign_in_again(figures).await,
        }
    }

    /// Signs out (keeping the notes and unsent changes) and in again.
    async fn sign_in_again(&mut self, figures: &Figures) {
        figures.sign_in_cycles.fetch_add(1, Ordering::SeqCst);
        self.signing_out.store(true, Ordering::SeqCst);
        if let Err(e) = self.engine.sign_out(false).await {
            figures.fail(format!("client {}: sign out: {e}", self.n));
        }
        self.sign_in(figures).await;
        self.signing_out.store(false, Ordering::SeqCst);
    }

    async fn sign_in(&self, figures: &Figures) {
        if let Err(e) = self.engine.sign_in(&self.url, &self.user, PW).await {
            figures.fail(format!("client {}: sign in: {e}", self.n));
        }
    }

    /// Syncs until nothing is pending.
    async fn drain(&self, figures: &Figures) {
        for _ in 0..3 {
            if let Err(e) = self.engine.sync_now().await {
                figures.fail(format!("client {}: final sync: {e}", self.n));
            }
            if self.engine.status().pending == 0 {
                return;
            }
        }
        figures.fail(format!(
            "client {}: still {} pending after three syncs",
            self.n,
            self.engine.status().pending
        ));
    }
}

/// Counts every engine error the status shows (background syncs included)
/// that the client did not cause by signing out.
fn watch_errors(n: usize, engine: &Engine, signing_out: Arc<AtomicBool>, figures: Arc<Figures>) {
    let mut rx = engine.subscribe();
    tokio::spawn(async move {
        let mut had = false;
        while rx.changed().await.is_ok() {
            let err = rx.borrow_and_update().last_error.clone();
            let has = err.is_some();
            if has && !had && !signing_out.load(Ordering::SeqCst) {
                let e = err.unwrap();
                figures.fail(format!(
                    "client {n}: status error {}: {}",
                    e.code, e.message
                ));
            }
            had = has;
        }
    });
}

fn engine_config(dir: &std::path::Path) -> Config {
    // The app's own timings (3 s heartbeat, 500 ms edit debounce, 30 s
    // sync interval); shorter offline probes so a blip would heal in time.
    let mut c = Config::new(dir);
    c.backoff_min = Duration::from_millis(200);
    c.backoff_max = Duration::from_secs(2);
    c
}

/// The live notes on the server (title, body), sorted, as `token` sees them.
/// One page: a client writes a few hundred notes at the most.
async fn notes_on_server(http: &reqwest::Client, url: &str, token: &str) -> Vec<(String, String)> {
    let limit = latchkey_protocol::sync::MAX_PULL_LIMIT;
    let page: latchkey_protocol::PullResponse = http
        .get(format!("{url}/v1/sync/pull?since=0&limit={limit}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!page.more, "more than {limit} notes");
    let mut held: Vec<_> = page
        .changes
        .into_iter()
        .filter(|c| !c.deleted)
        .map(|c| (c.title, c.body))
        .collect();
    held.sort();
    held
}

fn percentile(sorted: &[u32], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    Duration::from_micros(sorted[(sorted.len() * p / 100).min(sorted.len() - 1)] as u64)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_lose_nothing_and_fail_no_request() {
    let window = if long() {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(60)
    };
    server_bin(); // built before the clock starts
    let t0 = Instant::now();
    let server = TestServer::start(&["--access-ttl", ACCESS_TTL]);
    let pids = server.pids();

    // Warm-up 1: the users, with the server's CLI, a few at once.
    let users: Vec<String> = (0..CLIENTS).map(|n| format!("load{n:03}")).collect();
    std::thread::scope(|s| {
        for chunk in users.chunks(CLIENTS.div_ceil(6)) {
            let server = &server;
            s.spawn(move || chunk.iter().for_each(|u| server.add_user(u, PW)));
        }
    });
    let users_took = t0.elapsed();

    // Warm-up 2: the engines, signed in a few at a time.
    let figures = Arc::new(Figures::default());
    let dirs = tempfile::tempdir().unwrap();
    let mut clients = Vec::with_capacity(CLIENTS);
    for (n, user) in users.iter().enumerate() {
        let signing_out = Arc::new(AtomicBool::new(false));
        let http = LoadHttp {
            inner: ReqwestHttp::new(Duration::from_secs(5)).unwrap(),
            figures: figures.clone(),
            signing_out: signing_out.clone(),
        };
        let vault = MemoryVault::new();
        let engine = Engine::start(
            engine_config(&dirs.path().join(format!("c{n}"))),
            Arc::new(vault.clone()) as Arc<dyn Vault>,
            Arc::new(http),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        watch_errors(n, &engine, signing_out.clone(), figures.clone());
        clients.push(Client {
            n,
            vault,
            url: server.url(),
            user: user.clone(),
            engine,
            signing_out,
            notes: BTreeMap::new(),
            created: 0,
            edits: 0,
        });
    }
    let signed_in_from = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(SIGN_IN_AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        let (gate, figures) = (gate.clone(), figures.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            c.sign_in(&figures).await;
            c
        });
    }
    let mut clients = tasks.join_all().await;
    clients.sort_by_key(|c| c.n);
    let sign_ins_took = signed_in_from.elapsed();

    // The measured window.
    figures.phase.store(MEASURED, Ordering::SeqCst);
    let window_from = Instant::now();
    let start = sample(&pids, Duration::ZERO);
    let stop_at = window_from + window;
    let (stop_sampling, mut sampling) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn({
        let every = window / 12;
        let pids = pids.clone();
        async move {
            let mut samples = Vec::new();
            while tokio::time::timeout(every, sampling.changed())
                .await
                .is_err()
            {
                samples.push(sample(&pids, window_from.elapsed()));
            }
            samples
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        let figures = figures.clone();
        tasks.spawn(async move {
            loop {
                let think = Duration::from_millis(rand::thread_rng().gen_range(1000..4000));
                if Instant::now() + think >= stop_at {
                    break;
                }
                tokio::time::sleep(think).await;
                c.act(&figures).await;
            }
            c
        });
    }
    let mut clients = tasks.join_all().await;
    clients.sort_by_key(|c| c.n);
    let end = sample(&pids, window_from.elapsed());
    let _ = stop_sampling.send(true);
    let timeline = sampler.await.unwrap();
    let measured = window_from.elapsed();

    // Drain: every client syncs until nothing is pending.
    figures.phase.store(DRAIN, Ordering::SeqCst);
    let drain_from = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        let figures = figures.clone();
        tasks.spawn(async move {
            c.drain(&figures).await;
            c
        });
    }
    let mut clients = tasks.join_all().await;
    clients.sort_by_key(|c| c.n);

    // What the server holds, and what every client holds, is what each
    // client wrote: every edit there exactly once, no conflict copy. The
    // server is asked with each client's own session (from its keychain),
    // which spares 200 more Argon2 sign-ins.
    let http = web();
    let mut tasks = tokio::task::JoinSet::new();
    for c in &clients {
        let mut want: Vec<(String, String)> = c.notes.values().cloned().collect();
        want.sort();
        let local = c.engine.list_notes().await.map(|notes| {
            let mut v: Vec<(String, String)> =
                notes.into_iter().map(|n| (n.title, n.body)).collect();
            v.sort();
            v
        });
        let accounts = c.vault.accounts();
        assert_eq!(accounts.len(), 1, "client {}: {accounts:?}", c.n);
        let entry = VaultEntry::from_json(&c.vault.raw(&accounts[0]).unwrap()).unwrap();
        let (http, url, n) = (http.clone(), server.url(), c.n);
        tasks.spawn(async move {
            let held = notes_on_server(&http, &url, entry.access_token.expose_secret()).await;
            (n, want, held, local)
        });
    }
    let mut mismatched = Vec::new();
    let mut notes_on_server = 0;
    for (n, want, held, local) in tasks.join_all().await {
        notes_on_server += held.len();
        if held != want {
            mismatched.push(format!(
                "client {n}: the server holds {} notes, the client wrote {}",
                held.len(),
                want.len()
            ));
        }
        match local {
            Ok(local) if local == want => {}
            Ok(local) => mismatched.push(format!(
                "client {n}: the client holds {} notes, it wrote {}",
                local.len(),
                want.len()
            )),
            Err(e) => mismatched.push(format!("client {n}: list: {e}")),
        }
    }
    let edits: u64 = clients.iter().map(|c| c.edits).sum();
    drop(clients);
    let drain_took = drain_from.elapsed();

    // The figures.
    let mut push = std::mem::take(&mut *figures.push_micros.lock().unwrap());
    push.sort_unstable();
    let secs = measured.as_secs_f64();
    let peak_load = timeline.iter().map(|s| s.load1).fold(end.load1, f64::max);
    match server.postgres_url() {
        None => {
            println!("\n== load and soak: {CLIENTS} engines, one latchkey-server (pid {pids:?})")
        }
        Some(_) => println!(
            "\n== load and soak: {CLIENTS} engines, through nginx to {} latchkey-server instances on PostgreSQL (pids {pids:?}; server figures are their sums)",
            pids.len()
        ),
    }
    println!(
        "warm-up: {} users via the CLI in {:.1}s, {CLIENTS} sign-ins ({SIGN_IN_AT_ONCE} at once) in {:.1}s",
        users.len(),
        users_took.as_secs_f64(),
        sign_ins_took.as_secs_f64()
    );
    println!(
        "measured window: {secs:.1}s; edits (saves + deletes) over the whole run: {edits}; notes on the server at the end: {notes_on_server}"
    );
    println!("requests in the window by kind (total {:.0}/s):", {
        let total: u64 = KINDS.iter().map(|(k, _)| figures.count(MEASURED, *k)).sum();
        total as f64 / secs
    });
    for (kind, name) in KINDS {
        let (w, m, d) = (
            figures.count(WARM_UP, kind),
            figures.count(MEASURED, kind),
            figures.count(DRAIN, kind),
        );
        if w + m + d > 0 {
            println!(
                "  {name:<26} {m:>8}  ({:>6.1}/s; warm-up {w}, drain {d})",
                m as f64 / secs
            );
        }
    }
    println!(
        "explicit syncs: {}; sign-out + sign-in cycles: {}; 401 answered by a refresh: {}; 401 after the client's own sign-out: {}",
        figures.explicit_syncs.load(Ordering::SeqCst),
        figures.sign_in_cycles.load(Ordering::SeqCst),
        figures.expired_401.load(Ordering::SeqCst),
        figures.after_sign_out_401.load(Ordering::SeqCst),
    );
    println!(
        "failed requests or syncs: {}",
        figures.failed.load(Ordering::SeqCst)
    );
    println!(
        "push latency ({} pushes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        push.len(),
        percentile(&push, 50).as_secs_f64() * 1e3,
        percentile(&push, 99).as_secs_f64() * 1e3,
        percentile(&push, 100).as_secs_f64() * 1e3,
    );
    println!(
        "server RSS: start {}, end {}; open fds: start {}, end {}; server CPU in the window {:.1}s ({:.0}% of one core)",
        mib(start.rss_kib),
        mib(end.rss_kib),
        start.fds,
        end.fds,
        end.cpu_secs - start.cpu_secs,
        (end.cpu_secs - start.cpu_secs) / secs * 100.0
    );
    println!(
        "load average (1 min): start {:.2}, end {:.2}, highest sampled {peak_load:.2}",
        start.load1, end.load1
    );
    println!("timeline (s, RSS, fds, SQLite connections (none on PostgreSQL), load1):");
    for s in std::iter::once(&start).chain(&timeline).chain([&end]) {
        println!(
            "  {:>6.0}  {:>10}  {:>5}  {:>3}  {:>5.2}",
            s.at.as_secs_f64(),
            mib(s.rss_kib),
            s.fds,
            s.db_fds,
            s.load1
        );
    }
    match server.postgres_url() {
        None => {
            let db_size =
                |name: &str| std::fs::metadata(server.dir.path().join(name)).map_or(0, |m| m.len());
            println!(
                "database at the end: {} + WAL {}",
                mib(db_size("server.db") / 1024),
                mib(db_size("server.db-wal") / 1024)
            );
        }
        Some(url) => {
            let size = PgCluster::shared().psql(url, "SELECT pg_database_size(current_database())");
            let size: u64 = size.trim().parse().unwrap_or(0);
            println!("database at the end (PostgreSQL): {}", mib(size / 1024));
        }
    }
    println!(
        "drain and checks {:.1}s; total wall time {:.1}s",
        drain_took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let failures = figures.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty() && figures.failed.load(Ordering::SeqCst) == 0,
        "{} failed requests or syncs; the first: {failures:#?}",
        figures.failed.load(Ordering::SeqCst)
    );
    assert!(mismatched.is_empty(), "{mismatched:#?}");
    assert!(
        edits > CLIENTS as u64 * 5,
        "the clients barely edited: {edits}"
    );
    assert!(
        figures.count(MEASURED, Kind::Refresh) >= CLIENTS as u64,
        "the clients did not refresh"
    );
    // A leak check with a generous margin: a few connections per client
    // may come and go, one descriptor per request or sign-in may not.
    assert!(
        end.fds <= start.fds + 2 * CLIENTS + 64,
        "the server's descriptors grew from {} to {}",
        start.fds,
        end.fds
    );
}
