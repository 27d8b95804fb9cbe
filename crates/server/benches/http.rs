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

#[allow(dead_code)] // each bench uses part of it
mod common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hyper::header::HeaderValue;
use latchkey_testkit::{ServerProcess, Spawn, add_user};
use uuid::Uuid;

use common::*;

/// Set in the environment of the child that serves the trivial handler.
const TRIVIAL_ENV: &str = "LATCHKEY_BENCH_TRIVIAL_SERVER";
/// A log filter that drops the per-request lines but not the start-up one.
const QUIET_LOG: &str = "warn,latchkey_server::server=info";
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
