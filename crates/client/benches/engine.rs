//! The client engine benchmarks of issue 3, against the real
//! `latchkey-server` binary (release) running as a child process on
//! 127.0.0.1. Figures and how to read them: BENCHMARKS.md, "Client engine".
//!
//! * `restore`: `Engine::start` on a data dir and vault that hold a
//!   signed-in session, with the server stopped: keychain read + token
//!   verification + opening the user's database. Once with the in-memory
//!   vault (target < 20 ms), once with the real Secret Service: this
//!   executable re-runs itself inside `dbus-run-session` with an unlocked
//!   `gnome-keyring-daemon`, as tests/keychain.rs does. A breakdown times
//!   the same steps one by one.
//! * `save`: `Engine::save_note` latency over a few thousand saves, half new
//!   notes and half edits, working offline (target p99 < 5 ms), with the
//!   disk's own fsync latency beside it; then the same while syncs run
//!   against the server.
//! * `sync`: 10,000 notes saved while working offline, then the network
//!   back on, two ways: (a) `set_work_offline(false)` alone, the engine's
//!   own reconnect; (b) `set_work_offline(false)` then `sync_now()`. Each
//!   until pending == 0 and to the end of the sync, verified by a pull of
//!   another session. In between, the same 10,000 ops pushed one per
//!   request with reqwest (one keep-alive connection, sequential) for a
//!   fresh user. Target: < 3 s and at least 20 times faster than that.
//! * `store`: the local store's share of such a reconnect, with no engine
//!   and no network.
//! * `live`: edit-to-visible latency between two engines of one user on
//!   loopback: engine A saves an edit of a synced note, and the time until
//!   engine B shows that text (B follows its status and reads the note at
//!   each change), over `--edits` edits one after another. A runs the
//!   app's defaults (edit debounce 500 ms), B's backstop sync is ten minutes
//!   away, so only the live-updates stream brings the edits. Then again
//!   with no debounce on A, which is the rest: A's push, the server's
//!   `changed` event, B's pull. Each run also gives the time to A's push
//!   acknowledged (A's pending count back to 0). Last, ten times, an
//!   administrator's `latchkey-server session revoke` (another process)
//!   while an engine is online: from the command's start to the engine in
//!   `revoked`, the moment the app shows the sign-in form (target < 2 s).
//! * `accounts`: two accounts signed in on one engine, `--notes` notes
//!   each (default 10,000 here too), switched back and forth: working
//!   offline, from `switch_account` to the other account's list read
//!   (`--switches` times, default 200); then online, from the switch to the
//!   status `online` for the account switched to (its server's session
//!   check; 50 times).
//!
//! `cargo bench -p latchkey-client --bench engine [-- OPTIONS]`, options:
//! `--only restore|save|sync|store|live|accounts` (comma-separated), `--restores N`
//! (default 200), `--saves N` (default 3000), `--notes N` (default 10000),
//! `--rounds N` (sync rounds, default 3; the medians are the figures),
//! `--edits N` (live edits per run, default 200), `--switches N` (default
//! 200), `--no-keyring` (skip the
//! Secret Service run). The server is the test
//! kit's (`latchkey_testkit::TestServer`): its binary built for the bench's
//! profile (release) unless `LATCHKEY_SERVER_BIN` names one.
//! `cargo test --benches` builds this and runs nothing.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use latchkey_client::http::{HttpRequest, HttpResponse};
use latchkey_client::store::LocalStore;
use latchkey_client::vault::account_name;
use latchkey_client::{
    Config, Engine, Http, KeyringVault, ReqwestHttp, SessionState, SystemClock, Vault, VaultEntry,
};
use latchkey_protocol::ExposeSecret;
use latchkey_protocol::{KeySet, Op, OpStatus, PullResponse, PushRequest, PushResponse};
use latchkey_testkit::server::SERVER_BIN_ENV;
use latchkey_testkit::{
    DesktopSession, Keyring, MemoryVault, TestServer, access_token, server_bin, server_notes,
    wait_for,
};
use rand::{Rng as _, SeedableRng as _};
use uuid::Uuid;

/// Set in the environment of the run inside `dbus-run-session`.
const INNER_ENV: &str = "LATCHKEY_BENCH_KEYRING_SESSION";
const PASSWORD: &str = "bench-password-123";
const KEYRING_SERVICE: &str = "latchkey-bench";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --benches` does not.
    if !args.iter().any(|a| a == "--bench") {
        println!("engine bench: not measuring (run it with `cargo bench`)");
        return ExitCode::SUCCESS;
    }
    let opts = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("engine bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if std::env::var_os(INNER_ENV).is_some() {
        let vault = KeyringVault::new(KEYRING_SERVICE).expect("a Secret Service is running");
        rt.block_on(restore(
            Arc::new(vault),
            "Secret Service (gnome-keyring)",
            opts.restores,
        ));
        return ExitCode::SUCCESS;
    }
    println!("server binary: {}", server_bin().display());
    machine();
    if opts.restore {
        rt.block_on(restore(
            Arc::new(MemoryVault::new()),
            "in-memory vault",
            opts.restores,
        ));
        if opts.keyring && !restore_in_keyring_session(opts.restores) {
            return ExitCode::FAILURE;
        }
    }
    if opts.save {
        rt.block_on(save(opts.saves));
    }
    if opts.sync {
        rt.block_on(sync(opts.notes, opts.rounds));
    }
    if opts.store {
        println!(
            "\n## store: the local share of a reconnect of {} notes",
            opts.notes
        );
        load("store");
        store_breakdown(&offline_notes(opts.notes));
    }
    if opts.live {
        rt.block_on(live(opts.edits));
    }
    if opts.accounts {
        rt.block_on(accounts(opts.notes, opts.switches));
    }
    load("end");
    ExitCode::SUCCESS
}

struct Options {
    restore: bool,
    save: bool,
    sync: bool,
    store: bool,
    live: bool,
    accounts: bool,
    keyring: bool,
    restores: usize,
    saves: usize,
    notes: usize,
    rounds: usize,
    edits: usize,
    switches: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Options {
            restore: true,
            save: true,
            sync: true,
            store: true,
            live: true,
            accounts: true,
            keyring: true,
            restores: 200,
            saves: 3000,
            notes: 10_000,
            rounds: 3,
            edits: 200,
            switches: 200,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| -> Result<usize, String> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .ok_or(format!("{name} takes a positive number"))
            };
            match a.as_str() {
                "--bench" => {}
                "--only" => {
                    let what = it
                        .next()
                        .ok_or("--only takes restore, save, sync, store, live or accounts")?;
                    o.restore = false;
                    o.save = false;
                    o.sync = false;
                    o.store = false;
                    o.live = false;
                    o.accounts = false;
                    for w in what.split(',') {
                        match w {
                            "restore" => o.restore = true,
                            "save" => o.save = true,
                            "sync" => o.sync = true,
                            "store" => o.store = true,
                            "live" => o.live = true,
                            "accounts" => o.accounts = true,
                            other => return Err(format!("unknown bench {other}")),
                        }
                    }
                }
                "--no-keyring" => o.keyring = false,
                "--restores" => o.restores = value("--restores")?,
                "--saves" => o.saves = value("--saves")?,
                "--notes" => o.notes = value("--notes")?,
                "--rounds" => o.rounds = value("--rounds")?.max(1),
                "--edits" => o.edits = value("--edits")?,
                "--switches" => o.switches = value("--switches")?,
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------- machine

fn load(when: &str) {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average ({when}): {}",
        l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}

fn machine() {
    println!(
        "cpus: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    load("start");
    let dir = tempfile::tempdir().unwrap();
    if let Ok(out) = Command::new("df").arg("-T").arg(dir.path()).output() {
        print!(
            "temp dir {} is on:\n{}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

// ---------------------------------------------------------------- helpers

/// The real transport, timing every request (path, start, end).
#[derive(Clone)]
struct TimingHttp {
    inner: ReqwestHttp,
    log: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
}

impl TimingHttp {
    fn new() -> Self {
        Self {
            inner: ReqwestHttp::new(Duration::from_secs(2)).unwrap(),
            log: Arc::default(),
        }
    }

    fn since(&self, t0: Instant) -> Vec<(String, Instant, Instant)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _)| *s >= t0)
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Http for TimingHttp {
    async fn send(&self, req: HttpRequest) -> latchkey_client::Result<HttpResponse> {
        let path = req
            .url
            .splitn(4, '/')
            .nth(3)
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_string();
        let start = Instant::now();
        let res = self.inner.send(req).await;
        self.log.lock().unwrap().push((path, start, Instant::now()));
        res
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// p50 / p90 / p99 / max / mean of a sample.
fn summary(label: &str, sample: &mut [Duration]) -> (Duration, Duration) {
    sample.sort();
    let n = sample.len();
    let pct = |p: f64| sample[((p / 100.0) * (n - 1) as f64).round() as usize];
    let mean = sample.iter().sum::<Duration>() / n as u32;
    println!(
        "  {label:<44} n={n:<5} p50 {}  p90 {}  p99 {}  max {}  mean {}",
        ms(pct(50.0)),
        ms(pct(90.0)),
        ms(pct(99.0)),
        ms(sample[n - 1]),
        ms(mean)
    );
    (pct(50.0), pct(99.0))
}

fn body_of(rng: &mut rand::rngs::StdRng, i: usize) -> String {
    let len = rng.gen_range(100..2000);
    let mut s = format!("note {i}: ");
    while s.len() < len {
        s.push_str("the quick brown fox jumps over the lazy dog. ");
    }
    s.truncate(len);
    s
}

async fn signed_in(server: &TestServer, user: &str, data: &Path, vault: Arc<dyn Vault>) -> Engine {
    server.add_user(user, PASSWORD);
    let e = Engine::start(
        Config::new(data),
        vault,
        Arc::new(TimingHttp::new()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    e.sign_in(&server.url(), user, PASSWORD).await.unwrap();
    e
}

// ---------------------------------------------------------------- restore

async fn restore(vault: Arc<dyn Vault>, label: &str, iterations: usize) {
    println!("\n## restore: Engine::start offline, {label}");
    let mut server = TestServer::start(&[]);
    let data = tempfile::tempdir().unwrap();
    let user = "restore";
    // A realistic session: 1,000 synced notes and 20 unsynced ones.
    let e = signed_in(&server, user, data.path(), vault.clone()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for i in 0..1000 {
        e.save_note(None, None, format!("synced {i}"), body_of(&mut rng, i))
            .await
            .unwrap();
    }
    e.sync_now().await.unwrap();
    e.set_work_offline(true);
    for i in 0..20 {
        e.save_note(None, None, format!("unsynced {i}"), body_of(&mut rng, i))
            .await
            .unwrap();
    }
    let server_url = server.url();
    drop(e);
    server.stop();
    load("restore");

    let http: Arc<dyn Http> = Arc::new(ReqwestHttp::new(Duration::from_secs(2)).unwrap());
    let start = || {
        Engine::start(
            Config::new(data.path()),
            vault.clone(),
            http.clone(),
            Arc::new(SystemClock),
        )
    };
    let mut times = Vec::with_capacity(iterations);
    for i in 0..iterations + 5 {
        let t = Instant::now();
        let e = start().await.unwrap();
        let dt = t.elapsed();
        let st = e.status();
        assert_eq!(st.state, SessionState::Offline, "{st:?}");
        assert_eq!(st.pending, 20);
        drop(e);
        if i >= 5 {
            times.push(dt);
        }
    }
    let (_, _) = summary("Engine::start (restore, offline)", &mut times);

    // The same steps one by one.
    let account = account_name(&server_url, user);
    let (mut t_load, mut t_verify, mut t_open, mut t_count) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        let raw = vault.load(&account).unwrap().unwrap();
        t_load.push(t.elapsed());
        let t = Instant::now();
        let entry = VaultEntry::from_json(&raw).unwrap();
        let keys = KeySet::from_jwks(&entry.jwks).unwrap();
        keys.verify_signed(entry.access_token.expose_secret(), &entry.issuer)
            .unwrap();
        t_verify.push(t.elapsed());
        let path = latchkey_client::engine::user_dir(data.path(), &entry.server, &entry.user.id)
            .join("notes.db");
        let t = Instant::now();
        let store = LocalStore::open(&path).unwrap();
        t_open.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(store.pending_count().unwrap(), 20);
        store.last_sync().unwrap();
        t_count.push(t.elapsed());
        drop(store);
    }
    summary("  keychain read (Vault::load)", &mut t_load);
    summary("  parse entry + JWKS + verify EdDSA", &mut t_verify);
    summary("  LocalStore::open (open, WAL, migrate)", &mut t_open);
    summary("  status queries (pending, last sync)", &mut t_count);
}

/// Runs the restore bench again inside a D-Bus session of its own with an
/// unlocked gnome-keyring, as tests/keychain.rs does.
fn restore_in_keyring_session(iterations: usize) -> bool {
    let (mut cmd, _home) = DesktopSession::new(Keyring::Unlocked("latchkey-bench"))
        .env(INNER_ENV, "1")
        .env(SERVER_BIN_ENV, server_bin())
        .command([
            "--bench",
            "--only",
            "restore",
            "--restores",
            &iterations.to_string(),
        ]);
    match cmd.status() {
        Ok(s) if s.success() => true,
        other => {
            eprintln!("the Secret Service run failed: {other:?}");
            false
        }
    }
}

// ---------------------------------------------------------------- save

async fn save(saves: usize) {
    println!("\n## save: Engine::save_note, {saves} saves (half new notes, half edits)");
    let server = TestServer::start(&[]);
    let data = tempfile::tempdir().unwrap();
    let e = signed_in(&server, "saver", data.path(), Arc::new(MemoryVault::new())).await;
    e.sync_now().await.unwrap();
    if let Ok(out) = Command::new("df").arg("-T").arg(data.path()).output() {
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut ids: Vec<Uuid> = Vec::new();
    e.set_work_offline(true);
    load("save");
    let user = e.status().user.unwrap();
    let wal = latchkey_client::engine::user_dir(data.path(), &server.url(), &user.id)
        .join("notes.db-wal");
    save_run(&e, 200, &mut ids, &mut rng, &wal).await; // warm-up
    let (mut times, resets) = save_run(&e, saves, &mut ids, &mut rng, &wal).await;
    slow_saves(&times, &resets, Duration::from_millis(5));
    summary("save_note, working offline", &mut times);
    fsync_floor(data.path(), 1000);

    // Online, with syncs running side by side (one every 100 ms): a save
    // may wait for a sync's transaction on the same database.
    e.set_work_offline(false);
    e.sync_now().await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncer = tokio::spawn({
        let (e, stop) = (e.clone(), stop.clone());
        async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                e.sync_now().await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        }
    });
    let (mut times, resets) = save_run(&e, saves, &mut ids, &mut rng, &wal).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let syncs = syncer.await.unwrap();
    slow_saves(&times, &resets, Duration::from_millis(5));
    summary(
        &format!("save_note, online, {syncs} syncs alongside"),
        &mut times,
    );
}

/// `n` saves, each a new note or (half the time, once there are notes) an
/// edit of a random earlier one; returns each save's time and whether the
/// WAL was reset during it (the save before it ran a checkpoint).
async fn save_run(
    e: &Engine,
    n: usize,
    ids: &mut Vec<Uuid>,
    rng: &mut rand::rngs::StdRng,
    wal: &Path,
) -> (Vec<Duration>, Vec<bool>) {
    // The WAL header's checkpoint sequence number moves on each reset.
    let wal_seq = || {
        std::fs::read(wal).ok().and_then(|b| {
            b.get(12..16)
                .map(|s| u32::from_be_bytes(s.try_into().unwrap()))
        })
    };
    let mut times = Vec::with_capacity(n);
    let mut resets = Vec::with_capacity(n);
    for i in 0..n {
        let id = (!ids.is_empty() && rng.gen_bool(0.5)).then(|| ids[rng.gen_range(0..ids.len())]);
        let body = body_of(rng, i);
        let before = wal_seq();
        let t = Instant::now();
        let note = e
            .save_note(id, None, format!("note {i}"), body)
            .await
            .unwrap();
        times.push(t.elapsed());
        resets.push(wal_seq() != before);
        if id.is_none() {
            ids.push(note.id);
        }
    }
    (times, resets)
}

/// Which of the slow saves ran a WAL checkpoint.
fn slow_saves(times: &[Duration], resets: &[bool], over: Duration) {
    let slow: Vec<usize> = (0..times.len()).filter(|&i| times[i] > over).collect();
    let checkpoint = |i: usize| resets.get(i + 1).copied().unwrap_or(false);
    let checkpoints = (0..times.len()).filter(|&i| checkpoint(i)).count();
    let mut ck: Vec<Duration> = (0..times.len())
        .filter(|&i| checkpoint(i))
        .map(|i| times[i])
        .collect();
    ck.sort();
    println!(
        "    {} saves over {}: {} of them ran a WAL checkpoint ({} checkpoints in all, median {})",
        slow.len(),
        ms(over),
        slow.iter().filter(|&&i| checkpoint(i)).count(),
        checkpoints,
        ck.get(ck.len() / 2).map_or("-".into(), |d| ms(*d))
    );
}

/// The disk's own fsync latency: 4 KiB rewritten and fsync'd, `n` times.
fn fsync_floor(dir: &Path, n: usize) {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = [7u8; 4096];
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&block, (i % 64) as u64 * 4096).unwrap();
        f.sync_all().unwrap();
        times.push(t.elapsed());
    }
    summary("the disk: 4 KiB write + fsync", &mut times);
}

// ---------------------------------------------------------------- sync

fn offline_notes(n: usize) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    (0..n)
        .map(|i| {
            let len = rng.gen_range(100..500);
            let mut body = format!("offline edit {i}: ");
            while body.len() < len {
                body.push_str("written on a train with no signal. ");
            }
            body.truncate(len);
            (format!("offline note {i}"), body)
        })
        .collect()
}

async fn verify_on_server(url: &str, user: &str, notes: &[(String, String)]) {
    let titles: std::collections::BTreeSet<String> = server_notes(url, user, PASSWORD)
        .await
        .into_iter()
        .map(|(title, ..)| title)
        .collect();
    assert_eq!(titles.len(), notes.len(), "notes on the server for {user}");
    assert!(notes.iter().all(|(t, _)| titles.contains(t)));
}

/// A signed-in engine holding `notes` saved while working offline.
async fn offline_engine(
    server: &TestServer,
    user: &str,
    data: &Path,
    notes: &[(String, String)],
) -> (Engine, TimingHttp) {
    server.add_user(user, PASSWORD);
    let http = TimingHttp::new();
    let e = Engine::start(
        Config::new(data),
        Arc::new(MemoryVault::new()),
        Arc::new(http.clone()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    e.sign_in(&server.url(), user, PASSWORD).await.unwrap();
    e.sync_now().await.unwrap();
    e.set_work_offline(true);
    let t = Instant::now();
    for (title, body) in notes {
        e.save_note(None, None, title.clone(), body.clone())
            .await
            .unwrap();
    }
    let dt = t.elapsed();
    println!(
        "  {user}: saved {} notes offline in {:.2} s ({} per save)",
        notes.len(),
        dt.as_secs_f64(),
        ms(dt / notes.len() as u32)
    );
    assert_eq!(e.status().pending, notes.len() as u64);
    (e, http)
}

/// Sums request times by path, as a one-line breakdown.
fn http_breakdown(log: &[(String, Instant, Instant)]) -> (Duration, String) {
    let mut by: std::collections::BTreeMap<&str, (usize, Duration)> = Default::default();
    let mut total = Duration::ZERO;
    for (path, s, e) in log {
        let slot = by.entry(path.as_str()).or_default();
        slot.0 += 1;
        slot.1 += *e - *s;
        total += *e - *s;
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(p, (n, d))| format!("{p} x{n} {:.0} ms", d.as_secs_f64() * 1e3))
        .collect();
    (total, parts.join(", "))
}

/// The store's share of a reconnect, without the engine or the network:
/// the same outbox pushed (with made-up `applied` results) and pulled back.
fn store_breakdown(notes: &[(String, String)]) {
    use latchkey_protocol::{Change, OpResult};
    let dir = tempfile::tempdir().unwrap();
    let mut store = LocalStore::open(&dir.path().join("notes.db")).unwrap();
    for (i, (title, body)) in notes.iter().enumerate() {
        store
            .save_note(Uuid::now_v7(), None, title, body, i as i64)
            .unwrap();
    }
    let zero = Duration::ZERO;
    let (mut next, mut push_json, mut apply, mut status) = (zero, zero, zero, zero);
    let (mut pull_json, mut pull_apply) = (zero, zero);
    let mut changes = Vec::new();
    let mut batches = 0;
    loop {
        let t = Instant::now();
        let ops = store
            .next_batch(latchkey_client::engine::PUSH_BATCH)
            .unwrap();
        next += t.elapsed();
        if ops.is_empty() {
            break;
        }
        batches += 1;
        let t = Instant::now();
        let body = serde_json::to_vec(&PushRequest { ops: ops.clone() }).unwrap();
        push_json += t.elapsed();
        assert!(!body.is_empty());
        let results: Vec<OpResult> = ops
            .iter()
            .map(|op| {
                changes.push(match op {
                    Op::Upsert {
                        note_id,
                        title,
                        body,
                        client_time,
                        ..
                    } => Change {
                        note_id: *note_id,
                        rev: changes.len() as i64 + 1,
                        title: title.clone(),
                        body: body.clone(),
                        deleted: false,
                        updated_at: *client_time,
                        conflict_of: None,
                    },
                    Op::Delete { .. } => unreachable!(),
                });
                OpResult {
                    op_id: op.op_id(),
                    status: OpStatus::Applied,
                    note_id: op.note_id(),
                    rev: changes.len() as i64,
                    original_status: None,
                    conflict_copy_id: None,
                    copy_rev: None,
                    server_note: None,
                }
            })
            .collect();
        let t = Instant::now();
        store.apply_push(&results).unwrap();
        apply += t.elapsed();
        let t = Instant::now();
        store.pending_count().unwrap();
        store.last_sync().unwrap();
        status += t.elapsed();
    }
    assert_eq!(store.pending_count().unwrap(), 0);
    let pages = changes.chunks(500).count();
    for (i, chunk) in changes.chunks(500).enumerate() {
        let json = serde_json::to_vec(&PullResponse {
            changes: chunk.to_vec(),
            cursor: ((i + 1) * 500) as i64,
            more: i + 1 < pages,
        })
        .unwrap();
        let t = Instant::now();
        let page: PullResponse = serde_json::from_slice(&json).unwrap();
        pull_json += t.elapsed();
        let t = Instant::now();
        store.apply_pull(&page).unwrap();
        pull_apply += t.elapsed();
    }
    let f = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    println!(
        "  store only, {} ops: next_batch x{} {}, push JSON encode {}, apply_push x{batches} {}, status queries {}, pull JSON decode {}, apply_pull x{pages} {}",
        notes.len(),
        batches + 1,
        f(next),
        f(push_json),
        f(apply),
        f(status),
        f(pull_json),
        f(pull_apply)
    );
}

async fn sync(n: usize, rounds: usize) {
    println!("\n## sync: reconnect with {n} notes saved offline, loopback, {rounds} rounds");
    let server = TestServer::start(&[]);
    let notes = offline_notes(n);
    let bytes: usize = notes.iter().map(|(t, b)| t.len() + b.len()).sum();
    println!("  {n} notes, {:.1} MB of title + body", bytes as f64 / 1e6);
    // Each round: (b), the baseline, (a), each for a fresh user, so that a
    // drift of the machine's speed hits all three alike.
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for round in 1..=rounds {
        println!("\n### round {round}");
        let r = sync_round(&server, &notes, round).await;
        for (all, x) in ratios.iter_mut().zip(r) {
            all.push(x);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}x"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("\n### speed-up over one op per request, median of {rounds} rounds (all, sorted)");
    for (label, v) in [
        "(b) to the end of the sync",
        "(b) to pending 0",
        "(a) to pending 0",
    ]
    .iter()
    .zip(ratios.iter_mut())
    {
        let m = median(v);
        println!("  {label}: {m:.1}x ({})", list(v));
    }
}

/// One round of the sync bench; the speed-ups of (b) to the end of the
/// sync, (b) to pending 0 and (a) to pending 0.
async fn sync_round(server: &TestServer, notes: &[(String, String)], round: usize) -> [f64; 3] {
    let n = notes.len();
    let url = server.url();
    // (b) set_work_offline(false) + sync_now()
    let data_b = tempfile::tempdir().unwrap();
    let (e, http) =
        offline_engine(server, &format!("sync-now-{round}"), data_b.path(), notes).await;
    load("sync (b)");
    let mut rx = e.subscribe();
    let drained = tokio::spawn(async move {
        loop {
            if rx.borrow_and_update().pending == 0 {
                return Instant::now();
            }
            rx.changed().await.unwrap();
        }
    });
    let t0 = Instant::now();
    e.set_work_offline(false);
    e.sync_now().await.unwrap();
    let t_b = t0.elapsed();
    let t_b_pending = drained.await.unwrap() - t0;
    assert_eq!(e.status().pending, 0);
    let log = http.since(t0);
    let (in_http, parts) = http_breakdown(&log);
    let first = log.first().map(|(_, s, _)| *s - t0).unwrap_or_default();
    println!(
        "  (b) set_work_offline(false) + sync_now(): pending 0 after {:.3} s, sync_now returned (pull done) after {:.3} s",
        t_b_pending.as_secs_f64(),
        t_b.as_secs_f64()
    );
    println!(
        "      HTTP (server + transport) {:.0} ms: {parts}; engine-side {:.0} ms",
        in_http.as_secs_f64() * 1e3,
        (t_b.saturating_sub(in_http)).as_secs_f64() * 1e3
    );
    println!("      first request sent after {}", ms(first));
    drop(e);
    verify_on_server(&url, &format!("sync-now-{round}"), notes).await;

    // The baseline: the same ops, one per request, for a fresh user.
    let one_by_one = format!("one-by-one-{round}");
    server.add_user(&one_by_one, PASSWORD);
    latchkey_client::http::install_tls_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let token = access_token(&client, &url, &one_by_one, PASSWORD).await;
    load("baseline");
    let t0 = Instant::now();
    for (i, (title, body)) in notes.iter().enumerate() {
        let req = PushRequest {
            ops: vec![Op::Upsert {
                op_id: Uuid::now_v7(),
                note_id: Uuid::now_v7(),
                base_rev: 0,
                title: title.clone(),
                body: body.clone(),
                client_time: i as i64,
                conflict_of: None,
            }],
        };
        let res = client
            .post(format!("{url}/v1/sync/push"))
            .bearer_auth(&token)
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let res: PushResponse = res.json().await.unwrap();
        assert_eq!(res.results[0].status, OpStatus::Applied);
    }
    let t_base = t0.elapsed();
    println!(
        "  baseline, one op per request (reqwest, one keep-alive connection): {:.3} s ({} per request)",
        t_base.as_secs_f64(),
        ms(t_base / n as u32)
    );
    verify_on_server(&url, &one_by_one, notes).await;

    // (a) set_work_offline(false) alone: the engine's own reconnect.
    let data_a = tempfile::tempdir().unwrap();
    let (e, http) = offline_engine(
        server,
        &format!("sync-switch-{round}"),
        data_a.path(),
        notes,
    )
    .await;
    load("sync (a)");
    let t0 = Instant::now();
    e.set_work_offline(false);
    wait_for(&e, 120, "pending 0", |s| s.pending == 0).await;
    let t_pending = t0.elapsed();
    // Wait for that sync to end: a second one queues behind it.
    e.sync_now().await.unwrap();
    let log = http.since(t0);
    let seq: Vec<String> = log
        .iter()
        .take(4)
        .map(|(p, s, _)| format!("{p} at {}", ms(*s - t0)))
        .collect();
    println!("      first requests: {}", seq.join(", "));
    let probe = log
        .iter()
        .find(|(p, _, _)| p == "healthz")
        .map(|(_, s, _)| *s - t0)
        .unwrap_or_default();
    let sessions: Vec<_> = log
        .iter()
        .filter(|(p, _, _)| p == "v1/auth/session")
        .collect();
    // The first sync ends with the last pull before the second session check.
    let done = log
        .iter()
        .filter(|(p, _, _)| p == "v1/sync/pull")
        .filter(|(_, s, _)| sessions.get(1).is_none_or(|(_, s2, _)| s < s2))
        .map(|(_, _, e)| *e - t0)
        .max()
        .unwrap_or_default();
    println!(
        "  (a) set_work_offline(false): first probe after {}, pending 0 after {:.3} s, sync done after {:.3} s",
        ms(probe),
        t_pending.as_secs_f64(),
        done.as_secs_f64()
    );
    drop(e);
    verify_on_server(&url, &format!("sync-switch-{round}"), notes).await;

    let x = |d: Duration| t_base.as_secs_f64() / d.as_secs_f64();
    println!(
        "  speed-up over one op per request: (b) {:.1}x to pending 0, {:.1}x to the end of the sync; (a) {:.1}x to pending 0",
        x(t_b_pending),
        x(t_b),
        x(t_pending)
    );
    [x(t_b), x(t_b_pending), x(t_pending)]
}

// ---------------------------------------------------------------- live

/// An engine of `user` on `data` with `config`, the real transport (with
/// its live-updates stream), signed in and online.
async fn live_engine(server: &TestServer, user: &str, config: Config) -> Engine {
    let e = Engine::start(
        config,
        Arc::new(MemoryVault::new()),
        Arc::new(ReqwestHttp::new(Duration::from_secs(2)).unwrap()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    e.sign_in(&server.url(), user, PASSWORD).await.unwrap();
    wait_for(&e, 30, "online", |s| s.state == SessionState::Online).await;
    e
}

async fn live(edits: usize) {
    println!("\n## live: edit on engine A to visible on engine B, {edits} edits, loopback");
    let server = TestServer::start(&[]);
    for (label, debounce) in [
        ("A with the app's edit debounce (500 ms)", None),
        ("A with no edit debounce", Some(Duration::ZERO)),
    ] {
        load("live");
        live_run(&server, label, debounce, edits).await;
    }
    load("revoked");
    revoked_while_online(&server, 10).await;
}

/// An administrator revokes a user's sessions (`latchkey-server session
/// revoke`, another process) while the engine is online with its stream
/// open: from the command's start to the engine in `revoked` (the app then
/// shows the sign-in form), `rounds` times.
async fn revoked_while_online(server: &TestServer, rounds: usize) {
    let mut took = Vec::new();
    for round in 0..rounds {
        let user = format!("revoked-{round}");
        server.add_user(&user, PASSWORD);
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.sync_interval = Duration::from_secs(600);
        let e = live_engine(server, &user, config).await;
        // Let the stream open (nothing to wait on from outside).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = Instant::now();
        // The command runs as a process of its own; the engine goes on.
        tokio::task::block_in_place(|| server.revoke_user(&user));
        wait_for(&e, 10, "revoked", |s| s.state == SessionState::Revoked).await;
        took.push(t0.elapsed());
    }
    println!("  revoked by the admin command while online:");
    summary(
        "command started -> engine revoked (sign-in form)",
        &mut took,
    );
}

/// One run: a fresh user, A (its debounce `debounce`, else the default)
/// and B (its backstop ten minutes away), `edits` timed edits after a few
/// untimed ones.
async fn live_run(server: &TestServer, label: &str, debounce: Option<Duration>, edits: usize) {
    let user = format!("live-{}", debounce.map_or(500, |d| d.as_millis()));
    server.add_user(&user, PASSWORD);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config_a = Config::new(dir_a.path());
    if let Some(d) = debounce {
        config_a.edit_debounce = d;
    }
    let mut config_b = Config::new(dir_b.path());
    config_b.sync_interval = Duration::from_secs(600);
    let a = live_engine(server, &user, config_a).await;
    let b = live_engine(server, &user, config_b).await;
    let note = a
        .save_note(None, None, "live".into(), "edit 0".into())
        .await
        .unwrap();
    let mut rx_a = a.subscribe();
    let mut rx_b = b.subscribe();
    let warm_up = 5;
    let (mut visible, mut pushed) = (Vec::new(), Vec::new());
    for i in 0..warm_up + edits {
        let body = format!("edit {} of note {}", i + 1, note.id);
        rx_a.borrow_and_update();
        rx_b.borrow_and_update();
        let t0 = Instant::now();
        a.save_note(Some(note.id), None, "live".into(), body.clone())
            .await
            .unwrap();
        // A's push acknowledged, and B showing the text, followed at once.
        let acked = async {
            loop {
                if rx_a.borrow_and_update().pending == 0 {
                    return t0.elapsed();
                }
                rx_a.changed().await.unwrap();
            }
        };
        let shown = async {
            loop {
                rx_b.borrow_and_update();
                if b.get_note(note.id).await.is_ok_and(|n| n.body == body) {
                    return t0.elapsed();
                }
                rx_b.changed().await.unwrap();
            }
        };
        let (acked, shown) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(acked, shown)
        })
        .await
        .unwrap_or_else(|_| panic!("edit {i} not on B within 60 s"));
        if i >= warm_up {
            pushed.push(acked);
            visible.push(shown);
        }
    }
    println!("  {label}:");
    let (p50, _) = summary("save on A -> text shown on B", &mut visible);
    summary("save on A -> A's push acknowledged", &mut pushed);
    let debounce = debounce.unwrap_or(Config::new(dir_a.path()).edit_debounce);
    // Edits another sync of A's carried before their debounce ran out.
    let early = visible.iter().filter(|&&d| d < debounce).count();
    println!(
        "    the edit debounce ({}) is {:.0}% of the p50; {early} of {} edits shown before it ran out",
        ms(debounce),
        100.0 * debounce.as_secs_f64() / p50.as_secs_f64(),
        visible.len()
    );
    assert_eq!(b.status().state, SessionState::Online);
}

// ---------------------------------------------------------------- accounts

/// Switches between two accounts of one engine, `notes` notes each.
async fn accounts(notes: usize, switches: usize) {
    println!("\n## accounts: switching between two accounts of {notes} notes each");
    let server = TestServer::start(&[]);
    let data = tempfile::tempdir().unwrap();
    let http = TimingHttp::new();
    let e = Engine::start(
        Config::new(data.path()),
        Arc::new(MemoryVault::new()),
        Arc::new(http.clone()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    for user in ["acct-a", "acct-b"] {
        server.add_user(user, PASSWORD);
        e.sign_in(&server.url(), user, PASSWORD).await.unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    e.set_work_offline(true);
    for user in ["acct-a", "acct-b"] {
        e.switch_account(&server.url(), user).await.unwrap();
        for i in 0..notes {
            e.save_note(None, None, format!("{user} {i}"), body_of(&mut rng, i))
                .await
                .unwrap();
        }
    }
    load("accounts");
    let user = |i: usize| {
        if i.is_multiple_of(2) {
            "acct-a"
        } else {
            "acct-b"
        }
    };
    let (mut switched, mut listed) = (Vec::new(), Vec::new());
    for i in 0..switches {
        let t0 = Instant::now();
        e.switch_account(&server.url(), user(i)).await.unwrap();
        switched.push(t0.elapsed());
        let list = e.list_notes().await.unwrap();
        listed.push(t0.elapsed());
        assert_eq!(list.len(), notes);
        assert!(list[0].title.starts_with(user(i)));
    }
    summary("offline: switch_account", &mut switched);
    summary("offline: switch + the other's whole list", &mut listed);

    // Online: both synced first, then each switch until the account
    // switched to has been checked and pulled (its session check and its
    // pull answered).
    e.set_work_offline(false);
    for i in 0..2 {
        e.switch_account(&server.url(), user(i)).await.unwrap();
        wait_for(&e, 600, "synced", |s| {
            s.state == SessionState::Online && s.pending == 0
        })
        .await;
    }
    let mut online = Vec::with_capacity(50);
    for i in 0..50 {
        let t0 = Instant::now();
        e.switch_account(&server.url(), user(i)).await.unwrap();
        let synced = loop {
            let calls = http.since(t0);
            let checked = calls.iter().any(|c| c.0 == "v1/auth/session");
            let pulled = calls.iter().find(|c| c.0 == "v1/sync/pull");
            if let (true, Some(pull)) = (checked, pulled) {
                break pull.2;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no sync after the switch"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        online.push(synced - t0);
    }
    summary("online: switch to session check + pull", &mut online);
}
