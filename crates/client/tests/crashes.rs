//! Crashes (issue 5, items 2 and 3), against the real server process.
//!
//! * The server SIGKILLed at random points while a client pushes many
//!   offline edits and another loop keeps refreshing (1 s access tokens):
//!   after a restart and a resync nothing is lost or duplicated, the session
//!   is still alive, and the database passes `PRAGMA integrity_check`.
//! * A process using the engine SIGKILLed during bursts of saves: every save
//!   that returned is on disk, every unsynced edit is queued exactly once,
//!   and one sync puts each note on the server exactly once.
//!
//! The child process is this test binary run again (`--exact crash_child`)
//! with `LATCHKEY_CRASH_CHILD` set. Runs are random from a seed that is
//! printed; `LATCHKEY_SEED=<n>` replays it, `LATCHKEY_LONG=1` runs the long
//! versions (`bash scripts/reliability.sh crashes`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use latchkey_client::http::{HttpRequest, HttpResponse};
use latchkey_client::{
    Engine, Http, ReqwestHttp, SessionState, SystemClock, Vault, engine::user_dir,
};
use latchkey_protocol::ExposeSecret;
use latchkey_testkit::*;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

const CHILD_ENV: &str = "LATCHKEY_CRASH_CHILD";

fn long() -> bool {
    std::env::var("LATCHKEY_LONG").is_ok_and(|v| v == "1")
}

/// The run's seed: `LATCHKEY_SEED`, or a fresh one, printed for replay.
fn seed(what: &str) -> u64 {
    let seed = std::env::var("LATCHKEY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{what}: seed {seed} (replay with LATCHKEY_SEED={seed})");
    seed
}

/// Polls `done` every millisecond until it holds, failing after `secs`.
async fn poll(secs: u64, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A copy of a database (with its WAL) as a kill left it, so the product's
/// own recovery still runs on the original.
fn crash_copy(path: &Path) -> (tempfile::TempDir, rusqlite::Connection) {
    let copy = tempfile::tempdir().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    for suffix in ["", "-wal"] {
        let from = path.with_file_name(format!("{name}{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("{name}{suffix}"))).unwrap();
        }
    }
    let conn = rusqlite::Connection::open(copy.path().join(name)).expect("open the database");
    (copy, conn)
}

/// `PRAGMA integrity_check`: "ok", or what is wrong.
fn integrity_check(conn: &rusqlite::Connection) -> String {
    let mut stmt = conn.prepare("PRAGMA integrity_check").unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    rows.join("; ")
}

// ---------------------------------------------------------------- server crashes

const KINDS: [&str; 4] = ["push", "refresh", "pull", "other"];

/// A transport that knows which requests are in flight, by kind.
#[derive(Clone)]
struct Watched {
    inner: ReqwestHttp,
    started: Arc<[AtomicUsize; 4]>,
    active: Arc<[AtomicUsize; 4]>,
}

impl Watched {
    fn new() -> Self {
        Self {
            inner: ReqwestHttp::new(Duration::from_secs(2)).unwrap(),
            started: Arc::default(),
            active: Arc::default(),
        }
    }

    fn started(&self, kind: usize) -> usize {
        self.started[kind].load(Ordering::SeqCst)
    }

    /// The kinds of request in flight, e.g. "push+refresh", or "idle".
    fn in_flight(&self) -> String {
        let kinds: Vec<&str> = (0..KINDS.len())
            .filter(|&k| self.active[k].load(Ordering::SeqCst) > 0)
            .map(|k| KINDS[k])
            .collect();
        if kinds.is_empty() {
            "idle".into()
        } else {
            kinds.join("+")
        }
    }
}

#[async_trait]
impl Http for Watched {
    async fn send(&self, req: HttpRequest) -> latchkey_client::Result<HttpResponse> {
        let kind = if req.url.contains("/v1/sync/push") {
            0
        } else if req.url.contains("/v1/auth/token")
            && String::from_utf8_lossy(&req.body).contains("grant_type=refresh_token")
        {
            1
        } else if req.url.contains("/v1/sync/pull") {
            2
        } else {
            3
        };
        self.started[kind].fetch_add(1, Ordering::SeqCst);
        self.active[kind].fetch_add(1, Ordering::SeqCst);
        let res = self.inner.send(req).await;
        self.active[kind].fetch_sub(1, Ordering::SeqCst);
        res
    }
}

/// Where a run's kill is aimed.
#[derive(Debug, Clone, Copy)]
enum Aim {
    /// Just after a push went out (0–40 ms).
    Push,
    /// Just after a refresh went out (0–2 ms): before, during or after the
    /// server's rotation commits.
    Refresh,
    /// 0–0.5 s after going online.
    Anytime,
}

/// Saves a random edit: a new note (`title` unique) or an existing one.
async fn random_edit(
    e: &Engine,
    rng: &mut StdRng,
    notes: &Mutex<BTreeMap<String, (Uuid, String)>>,
    label: &str,
) {
    let existing = {
        let notes = notes.lock().unwrap();
        (!notes.is_empty() && rng.gen_bool(0.4)).then(|| {
            let i = rng.gen_range(0..notes.len());
            let (title, (id, _)) = notes.iter().nth(i).unwrap();
            (title.clone(), *id)
        })
    };
    let (title, id) = existing.unwrap_or_else(|| (unique(&format!("{label} ")), Uuid::nil()));
    let body = format!(
        "{label} {} {}",
        rng.r#gen::<u32>(),
        "b".repeat(rng.gen_range(50..1500))
    );
    let id = (!id.is_nil()).then_some(id);
    let note = e
        .save_note(id, None, title.clone(), body.clone())
        .await
        .expect("a local save never needs the server");
    notes.lock().unwrap().insert(title, (note.id, body));
}

#[derive(Default)]
struct ServerTally {
    kill_points: BTreeMap<String, usize>,
    edits: usize,
    refreshes: usize,
    pushes: usize,
    rotations_unheard: usize,
    integrity_ok: usize,
    /// From the restart until everything is on the server.
    resync_ms: Vec<u128>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_during_pushes_and_refreshes_loses_nothing() {
    let runs = if long() { 50 } else { 8 };
    let seed = seed("server crashes");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut server = TestServer::start(&["--access-ttl", "1s"]);
    let mut tally = ServerTally::default();
    for run in 0..runs {
        let user = format!("crash{run}");
        server.add_user(&user, PW);
        let dir = tempfile::tempdir().unwrap();
        let (http, vault) = (Watched::new(), MemoryVault::new());
        let e = Engine::start(
            test_config(dir.path()),
            Arc::new(vault.clone()) as Arc<dyn Vault>,
            Arc::new(http.clone()),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        e.sign_in(&server.url(), &user, PW).await.expect("sign in");

        // Many offline edits, so the reconnect sync is several pushes.
        e.set_work_offline(true);
        let notes = Arc::new(Mutex::new(BTreeMap::new()));
        let offline = rng.gen_range(300..1300);
        for _ in 0..offline {
            random_edit(&e, &mut rng, &notes, &format!("r{run}")).await;
        }
        let pushes_before = http.started(0);
        let refreshes_before = http.started(1);
        e.set_work_offline(false);

        // Meanwhile: one loop keeps confirming the session (a refresh every
        // second), another keeps editing.
        let stop = Arc::new(AtomicBool::new(false));
        let ended: Arc<Mutex<Vec<String>>> = Arc::default();
        let refresher = tokio::spawn({
            let (e, stop, ended) = (e.clone(), stop.clone(), ended.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    if let Err(err) = e.confirm_session().await
                        && (err.ends_session() || err.code() == "not_signed_in")
                    {
                        ended.lock().unwrap().push(err.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        let editor = tokio::spawn({
            let (e, stop, notes) = (e.clone(), stop.clone(), notes.clone());
            let mut rng = StdRng::seed_from_u64(rng.r#gen());
            async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    random_edit(&e, &mut rng, &notes, &format!("r{run}e")).await;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..10))).await;
                }
                n
            }
        });

        let aim = match rng.gen_range(0..3) {
            0 => Aim::Push,
            1 => Aim::Refresh,
            _ => Aim::Anytime,
        };
        match aim {
            Aim::Push => {
                poll(30, "a push", || http.started(0) > pushes_before).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await;
            }
            Aim::Refresh => {
                poll(30, "a refresh", || http.started(1) > refreshes_before).await;
                tokio::time::sleep(Duration::from_micros(rng.gen_range(0..2000))).await;
            }
            Aim::Anytime => {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
            }
        }
        let mut point = format!("{aim:?}: {}", http.in_flight());
        server.kill();
        let (_copy, db) = crash_copy(&server.db());
        let check = integrity_check(&db);
        assert_eq!(
            check, "ok",
            "run {run} (seed {seed}): the database after the kill"
        );
        tally.integrity_ok += 1;
        // Did the kill fall between the rotation's commit and its answer?
        // Then the client still holds the spent token: the retry window.
        let held: latchkey_client::VaultEntry =
            serde_json::from_str(&vault.raw(&vault.accounts()[0]).unwrap()).unwrap();
        let rotated: bool = db
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE parent = ?1 AND used_at IS NULL)",
                [&Sha256::digest(held.refresh_token.expose_secret().as_bytes())[..]],
                |r| r.get(0),
            )
            .unwrap();
        if rotated && point.contains("refresh") {
            point.push_str(", rotation committed, answer lost");
            tally.rotations_unheard += 1;
        }
        *tally.kill_points.entry(point.clone()).or_default() += 1;

        // The editor goes on offline for a moment, then everything stops.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        stop.store(true, Ordering::SeqCst);
        refresher.await.unwrap();
        tally.edits += offline + editor.await.unwrap();
        let restarted = Instant::now();
        server.restart();
        let st = wait_for(&e, 60, "online with nothing pending", |s| {
            s.pending == 0 && s.state == SessionState::Online
                || !matches!(s.state, SessionState::Online | SessionState::Offline)
        })
        .await;
        let resync = restarted.elapsed();
        tally.resync_ms.push(resync.as_millis());
        assert_eq!(
            st.state,
            SessionState::Online,
            "run {run} (seed {seed}, {point}): the session ended: {st:?}"
        );
        e.sync_now().await.expect("a full sync after the restart");
        assert_eq!(
            *ended.lock().unwrap(),
            Vec::<String>::new(),
            "run {run} (seed {seed}, {point}): no call may see the session ended"
        );
        assert_eq!(e.status().state, SessionState::Online);

        // Every edit's last text, each note once, on the server and here.
        let expected: BTreeMap<String, String> = notes
            .lock()
            .unwrap()
            .iter()
            .map(|(t, (_, b))| (t.clone(), b.clone()))
            .collect();
        let on_server = server_notes(&server.url(), &user, PW).await;
        assert_eq!(
            on_server.len(),
            expected.len(),
            "run {run} (seed {seed}, {point}): notes on the server (lost or duplicated)"
        );
        let got: BTreeMap<String, String> = on_server.into_iter().map(|(t, b, _)| (t, b)).collect();
        assert_eq!(got.len(), expected.len(), "run {run}: a title twice");
        for (title, body) in &expected {
            assert_eq!(
                got.get(title),
                Some(body),
                "run {run} (seed {seed}, {point}): {title} on the server"
            );
        }
        let local: BTreeMap<String, String> = e
            .list_notes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.title, n.body))
            .collect();
        assert_eq!(
            local, expected,
            "run {run}: the device holds the server's notes"
        );
        tally.refreshes += http.started(1) - refreshes_before;
        tally.pushes += http.started(0) - pushes_before;
        eprintln!(
            "run {run}: {point}, {} notes, {} pushes, restart to all synced {resync:?}",
            expected.len(),
            http.started(0) - pushes_before,
        );
    }
    server.stop();
    tally.resync_ms.sort();
    let final_check = integrity_check(&crash_copy(&server.db()).1);
    assert_eq!(final_check, "ok");
    tally.integrity_ok += 1;
    eprintln!(
        "CRASHES server: runs={runs} seed={seed} kill_points={:?} edits={} pushes={} refreshes={} \
         rotations_committed_answer_lost={} \
         lost=0 duplicates=0 sessions_wrongly_ended=0 integrity_check=ok x{} \
         restart_to_synced_ms(p50,max)=({},{}) secs={:.0}",
        tally.kill_points,
        tally.edits,
        tally.pushes,
        tally.refreshes,
        tally.rotations_unheard,
        tally.integrity_ok,
        tally.resync_ms[tally.resync_ms.len() / 2],
        tally.resync_ms[tally.resync_ms.len() - 1],
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- client crashes

/// A keychain in files, so a session outlives the process (each write is
/// atomic, as a keychain entry's is).
#[derive(Clone)]
struct FileVault(PathBuf);

impl FileVault {
    fn path(&self, account: &str) -> PathBuf {
        let name: String = account.bytes().map(|b| format!("{b:02x}")).collect();
        self.0.join(name)
    }

    /// The one session it holds.
    fn only_entry(&self) -> latchkey_client::VaultEntry {
        let entries: Vec<_> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_none())
            .collect();
        assert_eq!(entries.len(), 1, "one keychain entry");
        serde_json::from_str(&std::fs::read_to_string(&entries[0]).unwrap()).unwrap()
    }
}

impl Vault for FileVault {
    fn load(&self, account: &str) -> latchkey_client::Result<Option<String>> {
        match std::fs::read_to_string(self.path(account)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn store(&self, account: &str, secret: &str) -> latchkey_client::Result<()> {
        let path = self.path(account);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn delete(&self, account: &str) -> latchkey_client::Result<()> {
        match std::fs::remove_file(self.path(account)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// One save of a child's run; the parent replays the same plan.
struct Step {
    /// Which note, by the order notes were created in this run.
    note: usize,
    new: bool,
    title: String,
    body: String,
    /// A pause after this save (bursts), so a sync can start.
    pause_ms: u64,
}

struct Plan {
    rng: StdRng,
    run: usize,
    created: usize,
    next: usize,
}

impl Plan {
    fn new(seed: u64, run: usize) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            run,
            created: 0,
            next: 0,
        }
    }

    fn step(&mut self) -> Step {
        let i = self.next;
        self.next += 1;
        let new = self.created == 0 || self.rng.gen_bool(0.3);
        let note = if new {
            self.created += 1;
            self.created - 1
        } else {
            self.rng.gen_range(0..self.created)
        };
        let run = self.run;
        Step {
            note,
            new,
            title: format!("run {run} note {note}"),
            // Kept under PIPE_BUF with its line, so a line is written whole.
            body: format!(
                "run {run} save {i} {}",
                "s".repeat(self.rng.gen_range(0..800))
            ),
            pause_ms: if self.rng.gen_bool(0.05) {
                self.rng.gen_range(50..300)
            } else {
                0
            },
        }
    }
}

/// The child: an engine on `data_dir`, saving in bursts until it is killed,
/// printing `SAVE\t<i>\t<id>\t<body>` after each save returned.
#[test]
fn crash_child() {
    // Run by `a_process_killed_during_saves_loses_nothing` only.
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('\t').collect();
    let [data_dir, vault_dir, seed, run, online] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}")
    };
    let (seed, run): (u64, usize) = (seed.parse().unwrap(), run.parse().unwrap());
    let mut config = test_config(Path::new(data_dir));
    config.work_offline = online != "online";
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let e = Engine::start(
                config,
                Arc::new(FileVault(vault_dir.into())),
                Arc::new(ReqwestHttp::new(Duration::from_secs(2)).unwrap()),
                Arc::new(SystemClock),
            )
            .await
            .unwrap();
            let st = e.status();
            assert!(
                matches!(st.state, SessionState::Online | SessionState::Offline),
                "the child restored no session: {st:?}"
            );
            if online == "online" {
                // Syncs while typing, so kills land in pushes and edits
                // meet ops in flight.
                let e = e.clone();
                let mut rng = StdRng::seed_from_u64(seed ^ 1);
                tokio::spawn(async move {
                    loop {
                        let _ = e.sync_now().await;
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..10))).await;
                    }
                });
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "READY").unwrap();
            out.flush().unwrap();
            let mut plan = Plan::new(seed, run);
            let mut ids = Vec::new();
            for i in 0..1_000_000 {
                let step = plan.step();
                let id = (!step.new).then(|| ids[step.note]);
                let note = e
                    .save_note(id, None, step.title, step.body.clone())
                    .await
                    .expect("save");
                if step.new {
                    ids.push(note.id);
                }
                writeln!(out, "SAVE\t{i}\t{}\t{}", note.id, step.body).unwrap();
                out.flush().unwrap();
                if step.pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(step.pause_ms)).await;
                }
            }
            std::future::pending::<()>().await;
        });
}

/// Runs the child, kills it after `delay`, and returns the saves it
/// reported: (index, note id, body).
fn run_child(spec: &str, delay: Duration) -> Vec<(usize, Uuid, String)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut saves = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            // A line without its newline was cut by the kill: not reported.
            match out.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.last() != Some(&b'\n') => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            // The harness' own "test crash_child ... " shares the line.
            if text.ends_with("READY") {
                let _ = ready_tx.send(());
            } else if let Some(rest) = text.strip_prefix("SAVE\t") {
                let mut f = rest.splitn(3, '\t');
                let i = f.next().unwrap().parse().unwrap();
                let id = f.next().unwrap().parse().unwrap();
                saves.push((i, id, f.next().unwrap().to_string()));
            }
        }
        saves
    });
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child never got ready: {}", errors.join().unwrap());
    }
    std::thread::sleep(delay);
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "the child died by itself ({status}): {}",
            errors.join().unwrap()
        );
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by SIGKILL"
    );
    let _ = errors.join();
    reader.join().unwrap()
}

/// The outbox as it is on disk: (note id, sent, body) per op.
fn outbox(db: &Path) -> Vec<(Uuid, bool, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT note_id, sent, body FROM outbox ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?.parse().unwrap(),
            r.get(1)?,
            r.get(2)?,
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

#[derive(Default)]
struct ClientTally {
    offline_runs: usize,
    online_runs: usize,
    /// Online kills with a push's ops marked sent (in flight or unanswered).
    killed_mid_push: usize,
    saves_verified: usize,
    /// The save running at the kill, found committed or not.
    in_flight_committed: usize,
    in_flight_absent: usize,
    integrity_ok: usize,
    /// Kills after the server rotated the refresh token and before the
    /// child stored the new one.
    rotations_unstored: usize,
}

async fn parent_engine(data: &Path, vault: &FileVault, offline: bool) -> Engine {
    let mut config = test_config(data);
    config.work_offline = offline;
    Engine::start(
        config,
        Arc::new(vault.clone()),
        Arc::new(ReqwestHttp::new(Duration::from_secs(2)).unwrap()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_during_saves_loses_nothing() {
    let runs = if long() { 100 } else { 20 };
    let seed = seed("client crashes");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    // Short access tokens: an online child refreshes as it saves, so a kill
    // may fall between a rotation and the keychain write.
    let server = TestServer::start(&["--access-ttl", "2s"]);
    server.add_user("kate", PW);
    let data = tempfile::tempdir().unwrap();
    let vault = FileVault(data.path().join("keychain"));
    std::fs::create_dir_all(&vault.0).unwrap();
    let (db, user_id) = {
        let e = parent_engine(data.path(), &vault, false).await;
        let st = e.sign_in(&server.url(), "kate", PW).await.unwrap();
        let user = st.user.unwrap();
        (
            user_dir(data.path(), &st.server.unwrap(), &user.id).join("notes.db"),
            user.id,
        )
    };
    let mut tally = ClientTally::default();
    // Every note as the server and the device last agreed.
    let mut known: HashMap<Uuid, (String, String)> = HashMap::new();
    for run in 0..runs {
        let online = rng.gen_bool(0.5);
        let run_seed: u64 = rng.r#gen();
        let delay = Duration::from_millis(rng.gen_range(0..if online { 1500 } else { 500 }));
        let spec = format!(
            "{}\t{}\t{run_seed}\t{run}\t{}",
            data.path().display(),
            vault.0.display(),
            if online { "online" } else { "offline" }
        );
        let printed = run_child(&spec, delay);
        let ctx = format!("run {run} (seed {seed}, {} saves reported)", printed.len());

        // What the child reported must be exactly its plan.
        let mut plan = Plan::new(run_seed, run);
        let mut ids: Vec<Uuid> = Vec::new();
        let mut last: HashMap<Uuid, String> = HashMap::new();
        let mut titles: HashMap<Uuid, String> = HashMap::new();
        for (n, (i, id, body)) in printed.iter().enumerate() {
            let step = plan.step();
            assert_eq!((*i, body), (n, &step.body), "{ctx}: the child's report");
            if step.new {
                ids.push(*id);
            } else {
                assert_eq!(ids[step.note], *id, "{ctx}");
            }
            titles.insert(*id, step.title);
            last.insert(*id, body.clone());
        }
        // The save running at the kill may or may not have committed.
        let cut = plan.step();
        let cut_id = (!cut.new).then(|| ids[cut.note]);

        assert_eq!(
            integrity_check(&crash_copy(&db).1),
            "ok",
            "{ctx}: the local database"
        );
        tally.integrity_ok += 1;

        // A rotation the child never stored? Then the next refresh is a retry.
        let held = vault.only_entry();
        let unstored: bool = rusqlite::Connection::open_with_flags(
            server.db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE parent = ?1 AND used_at IS NULL)",
            [&Sha256::digest(held.refresh_token.expose_secret().as_bytes())[..]],
            |r| r.get(0),
        )
        .unwrap();
        tally.rotations_unstored += usize::from(unstored);

        // A fresh engine on the data dir, no network yet: still signed in.
        let e = parent_engine(data.path(), &vault, true).await;
        let st = e.status();
        assert_eq!(st.state, SessionState::Offline, "{ctx}: {st:?}");
        assert_eq!(st.user.as_ref().unwrap().id, user_id);
        let local: HashMap<Uuid, latchkey_client::Note> = e
            .list_notes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.id, n))
            .collect();
        let mut changed: HashSet<Uuid> = last.keys().copied().collect();
        let mut cut_committed = false;
        for (id, note) in &local {
            if let Some(body) = last.get(id) {
                let is_cut = cut_id == Some(*id) && note.body == cut.body;
                assert!(
                    note.body == *body || is_cut,
                    "{ctx}: note {id} lost its last saved text"
                );
                assert_eq!(note.title, titles[id], "{ctx}");
                cut_committed |= is_cut;
            } else if let Some((title, body)) = known.get(id) {
                assert_eq!(
                    (&note.title, &note.body),
                    (title, body),
                    "{ctx}: an older note changed"
                );
            } else {
                assert!(
                    cut.new && note.title == cut.title && note.body == cut.body && !cut_committed,
                    "{ctx}: an unexpected note {id}: {note:?}"
                );
                cut_committed = true;
                changed.insert(*id);
            }
        }
        for id in last.keys().chain(known.keys()) {
            assert!(local.contains_key(id), "{ctx}: note {id} is gone");
        }
        tally.saves_verified += printed.len();
        if cut_committed {
            tally.in_flight_committed += 1;
        } else {
            tally.in_flight_absent += 1;
        }

        // Every unsynced edit queued exactly once, with the latest text.
        let ops = outbox(&db);
        let mut unsent: HashMap<Uuid, usize> = HashMap::new();
        let mut sent: HashMap<Uuid, usize> = HashMap::new();
        for (id, is_sent, body) in &ops {
            let note = local
                .get(id)
                .unwrap_or_else(|| panic!("{ctx}: an op for no note"));
            if *is_sent {
                *sent.entry(*id).or_default() += 1;
            } else {
                *unsent.entry(*id).or_default() += 1;
                assert_eq!(body, &note.body, "{ctx}: the queued text is not the last");
            }
        }
        assert!(
            unsent.values().chain(sent.values()).all(|&n| n == 1),
            "{ctx}: {ops:?}"
        );
        let queued: HashSet<Uuid> = ops.iter().map(|o| o.0).collect();
        assert_eq!(st.pending, queued.len() as u64, "{ctx}: pending");
        if online {
            tally.online_runs += 1;
            if !sent.is_empty() {
                tally.killed_mid_push += 1;
            }
            // A change not queued was acknowledged by the server.
            for id in &changed {
                assert!(
                    queued.contains(id) || local[id].rev > 0,
                    "{ctx}: {id} not queued"
                );
            }
        } else {
            tally.offline_runs += 1;
            assert!(sent.is_empty(), "{ctx}: nothing was sent offline");
            assert_eq!(queued, changed, "{ctx}: one queued change per changed note");
        }

        // One sync: each note on the server exactly once, as here.
        e.set_work_offline(false);
        let st = wait_for(&e, 60, "synced", |s| {
            s.state == SessionState::Online && s.pending == 0
                || !matches!(s.state, SessionState::Online | SessionState::Offline)
        })
        .await;
        assert_eq!(
            st.state,
            SessionState::Online,
            "{ctx}: the session ended: {st:?}"
        );
        e.sync_now().await.expect("sync");
        let notes = e.list_notes().await.unwrap();
        let on_server = server_notes(&server.url(), "kate", PW).await;
        assert_eq!(on_server.len(), notes.len(), "{ctx}: notes on the server");
        let server_set: HashSet<(String, String)> =
            on_server.into_iter().map(|(t, b, _)| (t, b)).collect();
        assert_eq!(
            server_set.len(),
            notes.len(),
            "{ctx}: a note twice on the server"
        );
        known = notes
            .into_iter()
            .map(|n| (n.id, (n.title, n.body)))
            .collect();
        let local_set: HashSet<(String, String)> = known.values().cloned().collect();
        assert_eq!(
            server_set, local_set,
            "{ctx}: the server holds what the device holds"
        );
        drop(e);
        eprintln!(
            "run {run}: {} kill after {delay:?}, {} saves reported, cut save {}, {} queued, {} sent",
            if online { "online" } else { "offline" },
            printed.len(),
            if cut_committed { "committed" } else { "absent" },
            queued.len(),
            sent.len()
        );
    }
    eprintln!(
        "CRASHES client: runs={runs} seed={seed} offline_runs={} online_runs={} killed_mid_push={} \
         saves_verified={} cut_save_committed={} cut_save_absent={} rotations_unstored={} \
         lost=0 duplicates=0 sessions_wrongly_ended=0 \
         integrity_check=ok x{} notes={} secs={:.0}",
        tally.offline_runs,
        tally.online_runs,
        tally.killed_mid_push,
        tally.saves_verified,
        tally.in_flight_committed,
        tally.in_flight_absent,
        tally.rotations_unstored,
        tally.integrity_ok,
        known.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- regressions

/// Found by the server-crash runs: with pipelined pushes two batches (1,000
/// ops) can be marked sent when an answer is lost; the next sync resent
/// only the first 500 and called itself done, leaving the rest for the
/// sync after (30 s later by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_after_two_lost_batches_sends_them_all() {
    let server = TestServer::start(&[]);
    server.add_user("lara", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = engine(dir.path(), &vault, &http).await;
    e.sign_in(&server.url(), "lara", PW).await.unwrap();
    wait_for(&e, 20, "the first sync", |s| s.last_sync_result.is_some()).await;
    e.set_work_offline(true);
    for i in 0..1200 {
        e.save_note(None, None, format!("n{i}"), "x".into())
            .await
            .unwrap();
    }
    // The server applies the first batch and its answer is lost, while the
    // second batch is already marked sent.
    http.lose_push_responses.store(1, Ordering::SeqCst);
    e.set_work_offline(false);
    wait_for(&e, 20, "the sync that lost an answer", |s| {
        s.last_sync_result.as_deref().is_some_and(|r| r != "ok")
    })
    .await;
    let st = wait_for(&e, 20, "the next sync", |s| {
        s.last_sync_result.as_deref() == Some("ok")
    })
    .await;
    assert_eq!(st.pending, 0, "one sync sends everything it can: {st:?}");
    let notes = server_notes(&server.url(), "lara", PW).await;
    assert_eq!(notes.len(), 1200);
}
