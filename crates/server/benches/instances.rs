//! Issue 14's benchmarks, side by side in one run, against the release
//! `latchkey-server` binary as child processes on 127.0.0.1, PostgreSQL a
//! private cluster with its commits on disk as shipped (`fsync` and
//! `synchronous_commit` on), SQLite as the server runs it (`synchronous=FULL`),
//! both in this target's folder (a disk, not a tmpfs):
//!
//! * `push`: 10,000 new-note ops in batches of 500 over one connection, on
//!   SQLite and on PostgreSQL, alternating, `--rounds` times each (a fresh
//!   user each round). Target: at least 25,000 ops/s on PostgreSQL.
//! * `scale`: three closed loops of `--connections` keep-alive connections,
//!   `--secs` each: the authenticated session check, pushes of one new note
//!   (16 users, so that pushes do not all wait for one user's lock), and
//!   refreshes (each connection rotating a session of its own). Each on
//!   one instance on SQLite, one on PostgreSQL, one on PostgreSQL behind
//!   nginx, and three on PostgreSQL behind nginx (round robin, one nginx
//!   worker). The CPU time every kind of process used during each run
//!   (from `/proc`) says where the time goes. Refresh target: beat 120
//!   refreshes/s per vCPU (Keycloak's published sizing).
//!
//! `cargo bench -p latchkey-server --bench instances [-- OPTIONS]`:
//! `--only push|scale`, `--rounds N` (default 3), `--secs N` (default 10),
//! `--connections N` (default 64), `--no-fsync` (PostgreSQL without
//! `fsync`, as the tests run it). `cargo test --benches` builds this and
//! runs nothing.

#[allow(dead_code)] // each bench uses part of it
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use latchkey_protocol::{ExposeSecret, TokenResponse};
use latchkey_testkit::{Nginx, PgCluster, ServerProcess, Spawn, add_user, free_port};
use uuid::Uuid;

use common::*;

const OPS_PER_ROUND: usize = 10_000;
const BATCH: usize = 500;
const PUSH_USERS: usize = 16;
/// Keycloak's sizing guide: about 120 refreshes per second per vCPU.
const KEYCLOAK_REFRESH_PER_VCPU: f64 = 120.0;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("instances bench: not measuring (run it with `cargo bench`)");
        return ExitCode::SUCCESS;
    }
    match Options::parse(&args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("instances bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    push: bool,
    scale: bool,
    rounds: usize,
    secs: u64,
    connections: usize,
    no_fsync: bool,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut o = Options {
            push: true,
            scale: true,
            rounds: 3,
            secs: 10,
            connections: 64,
            no_fsync: false,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().context(format!("{arg} needs a value"));
            match arg.as_str() {
                "--only" => match value()?.as_str() {
                    "push" => o.scale = false,
                    "scale" => o.push = false,
                    other => bail!("--only takes push or scale, not {other:?}"),
                },
                "--rounds" => o.rounds = value()?.parse().context("--rounds")?,
                "--secs" => o.secs = value()?.parse().context("--secs")?,
                "--connections" => o.connections = value()?.parse().context("--connections")?,
                "--no-fsync" => o.no_fsync = true,
                _ => {}
            }
        }
        ensure!(
            o.rounds >= 1 && o.secs >= 2 && o.connections >= 1,
            "--rounds >= 1, --secs >= 2, --connections >= 1"
        );
        Ok(o)
    }
}

fn run(opts: Options) -> anyhow::Result<()> {
    ensure!(
        PgCluster::available(),
        "PostgreSQL is not installed (scripts/setup.sh installs it)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new()
        .prefix("latchkey-bench-")
        .tempdir_in(target_dir())
        .context("making a temporary directory")?;
    // `--no-fsync`: PostgreSQL as the tests run it, to tell the disk's
    // share of the time from the rest.
    let pg = if opts.no_fsync {
        PgCluster::start()
    } else {
        PgCluster::start_durable()
    };
    println!("server binary: {SERVER_BIN}");
    println!(
        "machine: {} cores, load average before: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    if opts.push {
        runtime.block_on(push_bench(&opts, &pg, dir.path()))?;
    }
    if opts.scale {
        runtime.block_on(scale_bench(&opts, &pg, dir.path()))?;
    }
    println!("load average after: {}", load_average());
    Ok(())
}

/// One database, as `--db` takes it.
fn databases(pg: &PgCluster, dir: &Path, name: &str) -> [(&'static str, PathBuf); 2] {
    [
        ("SQLite", dir.join(format!("{name}.db"))),
        ("PostgreSQL", PathBuf::from(pg.database())),
    ]
}

/// 10,000 ops in batches of 500, SQLite and PostgreSQL in turn.
async fn push_bench(opts: &Options, pg: &PgCluster, dir: &Path) -> anyhow::Result<()> {
    let [(_, sqlite), (_, postgres)] = databases(pg, dir, "push");
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut servers = Vec::new();
    for db in [&sqlite, &postgres] {
        servers.push(start_server(db, &dir.join("push.log"), &[])?);
    }
    for round in 0..opts.rounds {
        for (i, (db, server)) in [&sqlite, &postgres].iter().zip(&servers).enumerate() {
            let username = format!("push-{round}");
            let password = format!("bench-{}", Uuid::new_v4());
            add_user(SERVER_BIN.as_ref(), db, &username, &password);
            let token = sign_in_as(server.addr(), &username, &password).await?;
            let auth = HeaderValue::from_str(&format!("Bearer {}", token.access))?;
            let mut conn = Conn::open(server.addr()).await?;
            let ids: Vec<Uuid> = (0..OPS_PER_ROUND).map(|_| Uuid::now_v7()).collect();
            let started = Instant::now();
            for chunk in ids.chunks(BATCH) {
                push(&mut conn, &auth, chunk).await?;
            }
            times[i].push(started.elapsed());
            let pulled = pull_all(&mut conn, &auth).await?;
            ensure!(
                pulled.len() == OPS_PER_ROUND,
                "a pull found {}",
                pulled.len()
            );
        }
    }
    println!();
    println!(
        "## POST /v1/sync/push: {OPS_PER_ROUND} new notes in batches of {BATCH}, one connection, {} rounds",
        opts.rounds
    );
    println!(
        "{:<12} {:>10} {:>10} {:>12}",
        "store", "median s", "best s", "ops/s (med)"
    );
    let mut pg_rate = 0.0;
    for (name, t) in ["SQLite", "PostgreSQL"].iter().zip(&mut times) {
        t.sort();
        let median = t[t.len() / 2];
        let rate = OPS_PER_ROUND as f64 / median.as_secs_f64();
        println!(
            "{:<12} {:>10.3} {:>10.3} {:>12.0}",
            name,
            median.as_secs_f64(),
            t[0].as_secs_f64(),
            rate
        );
        pg_rate = rate;
    }
    println!(
        "target: PostgreSQL at least 25,000 ops/s: {}",
        if pg_rate >= 25_000.0 { "met" } else { "MISSED" }
    );
    for mut s in servers {
        s.terminate();
    }
    Ok(())
}

/// One way of running the server: its instances, and nginx if any.
struct Setup {
    name: &'static str,
    servers: Vec<ServerProcess>,
    nginx: Option<Nginx>,
    db: PathBuf,
}

impl Setup {
    fn start(
        name: &'static str,
        db: PathBuf,
        instances: usize,
        proxy: bool,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let mut servers = Vec::new();
        for i in 0..instances {
            let mut spawn = Spawn::serve(&db)
                .bin(SERVER_BIN)
                .log_to(dir.join(format!("scale-{}-{i}.log", name.replace(' ', "-"))));
            if proxy {
                spawn = spawn.args(["--issuer", &issuer, "--trusted-proxy", "127.0.0.1"]);
            }
            servers.push(spawn.try_start().map_err(anyhow::Error::msg)?);
        }
        let nginx = proxy.then(|| {
            let ports: Vec<u16> = servers.iter().map(ServerProcess::port).collect();
            Nginx::start(port, &ports)
        });
        Ok(Setup {
            name,
            servers,
            nginx,
            db,
        })
    }

    fn addr(&self) -> SocketAddr {
        match &self.nginx {
            Some(n) => SocketAddr::from(([127, 0, 0, 1], n.port)),
            None => self.servers[0].addr(),
        }
    }
}

/// What one connection of a closed loop does, over and over.
#[derive(Clone)]
enum Work {
    Session(HeaderValue),
    Push(HeaderValue),
    /// The session's current refresh token.
    Refresh(String),
}

impl Work {
    fn name(&self) -> &'static str {
        match self {
            Work::Session(_) => "GET /v1/auth/session",
            Work::Push(_) => "push (1 new note)",
            Work::Refresh(_) => "refresh",
        }
    }
}

impl Step for Work {
    async fn once(&mut self, conn: &mut Conn) -> anyhow::Result<bool> {
        match self {
            Work::Session(auth) => {
                let (status, _) = conn
                    .send(Method::GET, "/v1/auth/session", Some(auth), None)
                    .await?;
                Ok(status == StatusCode::OK)
            }
            Work::Push(auth) => Ok(push(conn, auth, &[Uuid::now_v7()]).await.is_ok()),
            Work::Refresh(token) => {
                let form = form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", token)
                    .finish();
                let (status, bytes) = conn.send_form("/v1/auth/token", form).await?;
                if status != StatusCode::OK {
                    return Ok(false);
                }
                let answer: TokenResponse = serde_json::from_slice(&bytes)?;
                *token = answer.refresh_token.expose_secret().to_owned();
                Ok(true)
            }
        }
    }
}

/// The session check, pushes and refreshes on each setup.
async fn scale_bench(opts: &Options, pg: &PgCluster, dir: &Path) -> anyhow::Result<()> {
    let [(_, sqlite), _] = databases(pg, dir, "scale");
    let pg_db = || PathBuf::from(pg.database());
    let setups = [
        ("1 x SQLite", sqlite, 1, false),
        ("1 x PostgreSQL", pg_db(), 1, false),
        ("nginx, 1 x PG", pg_db(), 1, true),
        ("nginx, 3 x PG", pg_db(), 3, true),
    ];
    let measure = Duration::from_secs(opts.secs);
    let warmup = Duration::from_secs(1);
    let mut rows = Vec::new();
    for (name, db, instances, proxy) in setups {
        let setup = Setup::start(name, db, instances, proxy, dir)?;
        let works = works(&setup, opts.connections).await?;
        for kind in works {
            let cpu_before = cpu_by_program();
            let stats = closed_loop(setup.addr(), kind.clone(), warmup, measure).await;
            let cpu = cpu_used(&cpu_before, &cpu_by_program(), measure + warmup);
            rows.push((setup.name, kind[0].name(), stats, cpu));
        }
        for mut s in setup.servers {
            s.terminate();
        }
    }
    println!();
    println!(
        "## closed loops of {} keep-alive connections, {} s each; CPU in cores busy (of {})",
        opts.connections,
        opts.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<16} {:<22} {:>9} {:>8} {:>8} {:>6} | {:>7} {:>7} {:>7} {:>7}",
        "setup",
        "request",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "servers",
        "pg",
        "nginx",
        "loader"
    );
    let mut best_refresh: f64 = 0.0;
    for (setup, kind, mut stats, cpu) in rows {
        stats.latencies.sort_unstable();
        if kind == "refresh" {
            best_refresh = best_refresh.max(stats.rate());
        }
        println!(
            "{:<16} {:<22} {:>9.0} {:>8.2} {:>8.2} {:>6} | {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
            setup,
            kind,
            stats.rate(),
            stats.percentile(50.0),
            stats.percentile(99.0),
            stats.errors,
            cpu.get("latchkey-server").copied().unwrap_or(0.0),
            cpu.get("postgres").copied().unwrap_or(0.0),
            cpu.get("nginx").copied().unwrap_or(0.0),
            cpu.get("loader").copied().unwrap_or(0.0),
        );
    }
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let keycloak = KEYCLOAK_REFRESH_PER_VCPU * vcpus;
    println!(
        "target: refreshes above Keycloak's {keycloak:.0}/s on {vcpus} vCPUs: {} (best {best_refresh:.0}/s)",
        if best_refresh > keycloak {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

/// The connections' work on `setup`: session checks, pushes, refreshes.
async fn works(setup: &Setup, connections: usize) -> anyhow::Result<[Vec<Work>; 3]> {
    let mut users = Vec::new();
    for u in 0..PUSH_USERS {
        let name = format!("scale-{u}");
        let password = format!("bench-{}", Uuid::new_v4());
        add_user(SERVER_BIN.as_ref(), &setup.db, &name, &password);
        users.push((name, password));
    }
    let bearer = |t: &Tokens| HeaderValue::from_str(&format!("Bearer {}", t.access));
    let mut pushers = Vec::new();
    for (name, password) in &users {
        pushers.push(bearer(&sign_in_as(setup.addr(), name, password).await?)?);
    }
    let first = sign_in_as(setup.addr(), &users[0].0, &users[0].1).await?;
    let session = vec![Work::Session(bearer(&first)?); connections];
    let push = (0..connections)
        .map(|i| Work::Push(pushers[i % PUSH_USERS].clone()))
        .collect();
    let mut refresh = Vec::new();
    for i in 0..connections {
        let (name, password) = &users[i % PUSH_USERS];
        refresh.push(Work::Refresh(
            sign_in_as(setup.addr(), name, password).await?.refresh,
        ));
    }
    Ok([session, push, refresh])
}

struct Tokens {
    access: String,
    refresh: String,
}

/// Signs `username` in with the password grant.
async fn sign_in_as(addr: SocketAddr, username: &str, password: &str) -> anyhow::Result<Tokens> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "password")
        .append_pair("username", username)
        .append_pair("password", password)
        .finish();
    let mut conn = Conn::open(addr).await?;
    let (status, bytes) = conn.send_form("/v1/auth/token", form).await?;
    ensure!(status == StatusCode::OK, "sign-in answered {status}");
    let tokens: TokenResponse = serde_json::from_slice(&bytes)?;
    Ok(Tokens {
        access: tokens.access_token.expose_secret().to_owned(),
        refresh: tokens.refresh_token.expose_secret().to_owned(),
    })
}

/// CPU seconds (user + system) so far of every running process of the
/// kinds this bench starts, by pid, with its kind.
fn cpu_by_program() -> HashMap<u32, (&'static str, f64)> {
    let me = std::process::id();
    let tick = 100.0; // USER_HZ, 100 on Linux
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let kind = if pid == me {
            "loader"
        } else if comm.starts_with("latchkey-server") {
            "latchkey-server"
        } else if comm.starts_with("postgres") {
            "postgres"
        } else if comm.starts_with("nginx") {
            "nginx"
        } else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After the name: state is field 3, utime 14 and stime 15.
        let ticks = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.insert(pid, (kind, (ticks(14) + ticks(15)) / tick));
    }
    out
}

/// Cores busy per kind between two readings `over` apart.
fn cpu_used(
    before: &HashMap<u32, (&'static str, f64)>,
    after: &HashMap<u32, (&'static str, f64)>,
    over: Duration,
) -> HashMap<&'static str, f64> {
    let mut used = HashMap::new();
    for (pid, (kind, secs)) in after {
        let earlier = before.get(pid).map_or(0.0, |(_, s)| *s);
        *used.entry(*kind).or_insert(0.0) += (secs - earlier) / over.as_secs_f64();
    }
    used
}
