//! Network faults (issue 5, part 1): randomized runs of "offline edits on
//! one or two devices, then reconnect through a proxy that drops, cuts,
//! delays, resets and black-holes requests", against the real server.
//! After each run every edit is on the server exactly once (in its note or
//! a conflict copy) and every device holds the server's notes.
//!
//! * short: 20 runs, inside `cargo test`;
//! * long: `LATCHKEY_LONG=1` (200 runs), see scripts/reliability.sh;
//! * `LATCHKEY_SEED=<run seed>` replays one run, `LATCHKEY_BASE_SEED=<seed>`
//!   a whole suite (the seeds are printed); `LATCHKEY_RUNS=n` sets the
//!   number of runs, `LATCHKEY_PARALLEL=n` how many go at once (3). Faults
//!   are drawn per request in the order requests arrive, so a replay follows
//!   the same script of edits and faults; timing can still order requests
//!   differently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_client::{
    Clock, Config, Engine, ReqwestHttp, SessionState, Status, SystemClock, Vault,
};
use latchkey_testkit::proxy::{self, Link, Proxy};
use latchkey_testkit::*;
use uuid::Uuid;

/// Fast timings, and timeouts short enough that a black hole costs a
/// second or two, not a minute.
fn config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.timeouts.request = Duration::from_secs(1);
    c.timeouts.probe = Duration::from_millis(500);
    c.timeouts.sync = Duration::from_secs(2);
    c
}

struct Device {
    _dir: tempfile::TempDir,
    engine: Engine,
}

async fn device(url: &str, user: &str) -> Device {
    device_with(url, user, Arc::new(SystemClock)).await
}

async fn device_with(url: &str, user: &str, clock: Arc<dyn Clock>) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(
        config(dir.path()),
        Arc::new(MemoryVault::new()) as Arc<dyn Vault>,
        Arc::new(ReqwestHttp::new(Duration::from_secs(1)).unwrap()),
        clock,
    )
    .await
    .unwrap();
    engine.sign_in(url, user, PW).await.expect("sign in");
    Device { _dir: dir, engine }
}

#[derive(Debug, Clone)]
enum Action {
    Upsert { title: String, body: String },
    Delete,
}

/// Every edit of a run.
#[derive(Default)]
struct Edits {
    /// Each device's last action on each note.
    last: BTreeMap<(usize, Uuid), Action>,
    /// Every text written: body -> (device, note).
    texts: HashMap<String, (usize, Uuid)>,
    /// Texts a device replaced or deleted while it showed them: an edit made
    /// on top of another device's edit rightly takes its place.
    replaced: HashSet<String>,
    count: u64,
}

impl Edits {
    /// `shown`: the text the device showed before (None for a new note).
    fn upsert(
        &mut self,
        dev: usize,
        note: Uuid,
        shown: Option<String>,
        title: String,
        body: String,
    ) {
        self.texts.insert(body.clone(), (dev, note));
        self.replaced.extend(shown);
        self.last
            .insert((dev, note), Action::Upsert { title, body });
        self.count += 1;
    }

    fn delete(&mut self, dev: usize, note: Uuid, shown: String) {
        self.replaced.insert(shown);
        self.last.insert((dev, note), Action::Delete);
        self.count += 1;
    }
}

/// One random edit on `dev`: a new note, an edit of one it shows, or a
/// delete.
async fn random_edit(rng: &mut Rng, dev: usize, engine: &Engine, tag: &str, edits: &mut Edits) {
    let k = edits.count;
    let notes = engine.list_notes().await.expect("list notes");
    let roll = rng.below(100);
    let title = format!("{tag} d{dev} e{k}");
    let body = format!("{tag}/d{dev}/e{k}/{:016x}", rng.next_u64());
    if notes.is_empty() || roll < 40 {
        let n = engine
            .save_note(None, None, title.clone(), body.clone())
            .await
            .expect("save a new note");
        edits.upsert(dev, n.id, None, title, body);
        return;
    }
    let note = &notes[rng.below(notes.len() as u64) as usize];
    if roll < 85 {
        engine
            .save_note(Some(note.id), None, title.clone(), body.clone())
            .await
            .expect("save an edit");
        edits.upsert(dev, note.id, Some(note.body.clone()), title, body);
    } else {
        match engine.delete_note(note.id).await {
            Ok(()) => edits.delete(dev, note.id, note.body.clone()),
            // a pull took it away meanwhile
            Err(latchkey_client::Error::NoteNotFound) => {}
            Err(e) => panic!("delete: {e}"),
        }
    }
}

#[derive(Default)]
struct Tally {
    runs: u64,
    requests: u64,
    faults: [u64; 6],
    answers_lost: BTreeMap<&'static str, u64>,
    edits: u64,
    lost: u64,
    duplicates: u64,
    diverged: u64,
    failures: Vec<String>,
}

/// What one run found wrong.
#[derive(Default)]
struct Outcome {
    lost: u64,
    duplicates: u64,
    diverged: u64,
    problems: Vec<String>,
}

fn all(sts: &[Status], pred: impl Fn(&Status) -> bool) -> bool {
    sts.iter().all(pred)
}

fn statuses(devs: &[Device]) -> Vec<Status> {
    devs.iter().map(|d| d.engine.status()).collect()
}

/// Polls (never a bare sleep) until `pred` holds for every device.
async fn settle(devs: &[Device], secs: u64, what: &str, pred: impl Fn(&Status) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let sts = statuses(devs);
        if all(&sts, &pred) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {sts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `sync_now` until it succeeds (a stale pooled connection may still fail
/// once after the faults stop).
async fn sync_ok(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match engine.sync_now().await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "sync never succeeded: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.runs += other.runs;
        self.requests += other.requests;
        for (t, c) in self.faults.iter_mut().zip(other.faults) {
            *t += c;
        }
        for (target, n) in other.answers_lost {
            *self.answers_lost.entry(target).or_default() += n;
        }
        self.edits += other.edits;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.diverged += other.diverged;
        self.failures.extend(other.failures);
    }
}

async fn one_run(server: Arc<TestServer>, seed: u64, long: bool) -> Tally {
    let mut tally = Tally::default();
    {
        // the CLI waits for a child process: off the runtime's threads
        let (server, user) = (server.clone(), format!("f{seed:016x}"));
        tokio::task::spawn_blocking(move || server.add_user(&user, PW))
            .await
            .unwrap();
    }
    let server = &*server;
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let user = format!("f{seed:016x}");
    let proxy = Proxy::start(server.port).await;
    let n_devs = 1 + rng.below(2) as usize;
    let mut devs = Vec::new();
    for _ in 0..n_devs {
        devs.push(device(&proxy.url(), &user).await);
    }
    let tag = format!("{seed:x}");
    let mut edits = Edits::default();

    // Some notes every device has before going offline.
    for _ in 0..rng.below(4) {
        let title = format!("{tag} shared e{}", edits.count);
        let body = format!("{tag}/shared/e{}/{:016x}", edits.count, rng.next_u64());
        let n = devs[0]
            .engine
            .save_note(None, None, title.clone(), body.clone())
            .await
            .unwrap();
        edits.upsert(0, n.id, None, title, body);
    }
    settle(&devs[..1], 30, "the shared notes pushed", |s| {
        s.pending == 0
    })
    .await;
    for d in &devs {
        sync_ok(&d.engine).await;
    }

    // Offline: the switch, or the network gone.
    let via_switch = rng.chance(0.5);
    let link_down = if rng.chance(0.5) {
        Link::Refused
    } else {
        Link::BlackHoled
    };
    if via_switch {
        for d in &devs {
            d.engine.set_work_offline(true);
        }
    } else {
        proxy.set_link(link_down);
    }
    let max_edits = if long { 20 } else { 8 };
    for (i, d) in devs.iter().enumerate() {
        for _ in 0..1 + rng.below(max_edits) {
            random_edit(&mut rng, i, &d.engine, &tag, &mut edits).await;
        }
    }

    // Reconnect with faults on, some devices editing on meanwhile.
    let p = 0.15 + 0.35 * rng.unit();
    let budget = 3 + rng.below(if long { 20 } else { 10 });
    let mut extra: Vec<u64> = (0..n_devs)
        .map(|_| if rng.chance(0.5) { 1 + rng.below(6) } else { 0 })
        .collect();
    proxy.set_policy(proxy::random(rng.next_u64(), p, proxy::Weights::default()));
    if via_switch {
        for d in &devs {
            d.engine.set_work_offline(false);
        }
    } else {
        proxy.set_link(Link::Up);
    }
    // Sometimes a device switches Work offline on for a moment, mid-sync.
    let mut toggle = rng.chance(0.3).then(|| {
        (
            rng.below(n_devs as u64) as usize,
            proxy.requests() + rng.below(8),
            Duration::from_millis(50 + rng.below(500)),
        )
    });
    let mut toggled_on: Option<Instant> = None;
    let mut next_edit_at = proxy.requests() + 1 + rng.below(6);
    let fault_phase_end = Instant::now() + Duration::from_secs(if long { 15 } else { 4 });
    loop {
        if extra.iter().any(|&n| n > 0) && proxy.requests() >= next_edit_at {
            let i = extra.iter().position(|&n| n > 0).unwrap();
            extra[i] -= 1;
            random_edit(&mut rng, i, &devs[i].engine, &tag, &mut edits).await;
            next_edit_at = proxy.requests() + 1 + rng.below(6);
            continue;
        }
        if let Some((dev, at, hold)) = toggle {
            match toggled_on {
                None if proxy.requests() >= at => {
                    devs[dev].engine.set_work_offline(true);
                    toggled_on = Some(Instant::now());
                }
                Some(t) if t.elapsed() >= hold => {
                    devs[dev].engine.set_work_offline(false);
                    toggle = None;
                }
                _ => {}
            }
        }
        let sts = statuses(&devs);
        let quiet = toggle.is_none()
            && all(&sts, |s| {
                s.state == SessionState::Online
                    && s.pending == 0
                    && s.last_sync_result.as_deref() == Some("ok")
            });
        let editing = extra.iter().any(|&n| n > 0);
        if (!editing && quiet && proxy.faults() >= budget) || Instant::now() > fault_phase_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Faults off: whatever is left settles.
    proxy.set_policy(proxy::pass());
    if let Some((dev, ..)) = toggle {
        devs[dev].engine.set_work_offline(false);
    }
    for (i, n) in extra.iter().enumerate() {
        for _ in 0..*n {
            random_edit(&mut rng, i, &devs[i].engine, &tag, &mut edits).await;
        }
    }
    settle(&devs, 60, "every device online with nothing pending", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    // Two rounds: the first pushes everything, the second pulls it all.
    for _ in 0..2 {
        for d in &devs {
            sync_ok(&d.engine).await;
        }
    }

    let outcome = check(server, &user, &devs, &edits).await;
    tally.runs += 1;
    tally.requests += proxy.requests();
    for (t, c) in tally.faults.iter_mut().zip(proxy.counts()) {
        *t += c;
    }
    for (target, n) in proxy.answers_lost() {
        *tally.answers_lost.entry(target).or_default() += n;
    }
    tally.edits += edits.count;
    tally.lost += outcome.lost;
    tally.duplicates += outcome.duplicates;
    tally.diverged += outcome.diverged;
    let faults: Vec<String> = FaultKind::ALL
        .iter()
        .zip(proxy.counts())
        .filter(|(_, c)| *c > 0)
        .map(|(k, c)| format!("{}={c}", k.name()))
        .collect();
    println!(
        "run seed={seed} devices={n_devs} offline_by={} p={p:.2} edits={} requests={} faults: {} answers_lost: {} -> lost={} duplicates={} diverged={} ({:.1}s)",
        if via_switch {
            "work_offline".to_string()
        } else {
            format!("{link_down:?}")
        },
        edits.count,
        proxy.requests(),
        faults.join(" "),
        fmt_map(&proxy.answers_lost()),
        outcome.lost,
        outcome.duplicates,
        outcome.diverged,
        started.elapsed().as_secs_f64()
    );
    for p in outcome.problems {
        println!("  seed={seed}: {p}");
        tally.failures.push(format!("seed={seed}: {p}"));
    }
    tally
}

/// Every edit's last text on the server exactly once, in its note or a
/// conflict copy of it (unless a device edited or deleted it on top);
/// deletes done unless another device's edit won; every device holding
/// exactly the server's notes, its session alive.
async fn check(server: &TestServer, user: &str, devs: &[Device], edits: &Edits) -> Outcome {
    let mut out = Outcome::default();
    let changes = server_changes(&server.url(), user, PW).await;
    let live: Vec<_> = changes.iter().filter(|c| !c.deleted).collect();
    let mut by_body: HashMap<&str, Vec<_>> = HashMap::new();
    for c in &live {
        by_body.entry(c.body.as_str()).or_default().push(*c);
        if !edits.texts.contains_key(&c.body) {
            out.problems
                .push(format!("a note nobody wrote: {:?} {:?}", c.title, c.body));
        }
    }
    for (body, notes) in &by_body {
        if notes.len() > 1 {
            out.duplicates += notes.len() as u64 - 1;
            out.problems.push(format!(
                "text {body:?} is on the server {} times: {:?}",
                notes.len(),
                notes.iter().map(|n| &n.title).collect::<Vec<_>>()
            ));
        }
    }
    for ((dev, note), action) in &edits.last {
        match action {
            Action::Upsert { title, body } => {
                let copy_title = format!("{title} (conflict copy)");
                let found = by_body.get(body.as_str()).is_some_and(|hits| {
                    hits.iter().any(|c| {
                        (c.note_id == *note && c.title == *title)
                            || (c.conflict_of == Some(*note) && c.title == copy_title)
                    })
                });
                // Not lost when another device edited or deleted it while
                // showing it (its base was this text's rev).
                if !found && !edits.replaced.contains(body) {
                    out.lost += 1;
                    out.problems.push(format!(
                        "lost: device {dev}'s last edit of {note} ({title:?}); the server has {:?}",
                        by_body.get(body.as_str())
                    ));
                }
            }
            Action::Delete => {
                if let Some(c) = live.iter().find(|c| c.note_id == *note) {
                    let by_other = edits
                        .texts
                        .get(&c.body)
                        .is_some_and(|(d, n)| d != dev && n == note);
                    if !by_other {
                        out.lost += 1;
                        out.problems.push(format!(
                            "device {dev}'s delete of {note} undone: the server has {:?}",
                            c.title
                        ));
                    }
                }
            }
        }
    }
    let mut want: Vec<_> = live
        .iter()
        .map(|c| (c.note_id, c.title.clone(), c.body.clone(), c.conflict_of))
        .collect();
    want.sort();
    for (i, d) in devs.iter().enumerate() {
        let mut have: Vec<_> = d
            .engine
            .list_notes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.id, n.title, n.body, n.conflict_of))
            .collect();
        have.sort();
        let st = d.engine.status();
        let alive = matches!(st.state, SessionState::Online | SessionState::Offline);
        if have != want || st.pending != 0 || !alive {
            out.diverged += 1;
            out.problems.push(format!(
                "device {i} differs from the server (state {:?}, pending {}):\n    device {have:?}\n    server {want:?}",
                st.state, st.pending
            ));
        }
    }
    out
}

fn fmt_map(m: &BTreeMap<&'static str, u64>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(" ")
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(
        v.strip_prefix("0x")
            .map_or_else(|| v.parse(), |h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|_| panic!("{name} must be a number")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_reconnect_through_network_faults_lose_and_duplicate_nothing() {
    let long = std::env::var_os("LATCHKEY_LONG").is_some_and(|v| v != "0" && !v.is_empty());
    let base = env_u64("LATCHKEY_BASE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let seeds: Vec<u64> = match env_u64("LATCHKEY_SEED") {
        Some(seed) => vec![seed],
        None => {
            let runs = env_u64("LATCHKEY_RUNS").unwrap_or(if long { 200 } else { 20 });
            let mut r = Rng::new(base);
            (0..runs).map(|_| r.next_u64()).collect()
        }
    };
    println!(
        "faults: base seed {base} ({} runs; replay one with LATCHKEY_SEED=<run seed>)",
        seeds.len()
    );
    // Short-lived access tokens: refreshes happen under faults too.
    let server = Arc::new(TestServer::start(&["--access-ttl", "4s"]));
    // Runs wait on timeouts and delays much of the time: a few at once.
    let parallel = env_u64("LATCHKEY_PARALLEL").unwrap_or(3).max(1) as usize;
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut running = tokio::task::JoinSet::new();
    for seed in seeds {
        if running.len() >= parallel {
            tally.add(running.join_next().await.unwrap().unwrap());
        }
        running.spawn(one_run(server.clone(), seed, long));
    }
    while let Some(done) = running.join_next().await {
        tally.add(done.unwrap());
    }
    let kinds: Vec<String> = FaultKind::ALL
        .iter()
        .zip(tally.faults)
        .map(|(k, c)| format!("{}={c}", k.name()))
        .collect();
    println!(
        "faults summary: runs={} requests={} faults={} ({}) answers_lost=({}) edits={} lost={} duplicates={} diverged={} seconds={:.0} base_seed={base}",
        tally.runs,
        tally.requests,
        tally.faults.iter().sum::<u64>(),
        kinds.join(" "),
        fmt_map(&tally.answers_lost),
        tally.edits,
        tally.lost,
        tally.duplicates,
        tally.diverged,
        started.elapsed().as_secs_f64(),
    );
    assert!(
        tally.failures.is_empty(),
        "{} problem(s):\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    assert_eq!((tally.lost, tally.duplicates, tally.diverged), (0, 0, 0));
}

/// Waits (polling) until the proxy has injected `n` faults.
async fn faults_reach(proxy: &Proxy, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.faults() < n {
        assert!(Instant::now() < deadline, "the request never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The race the random runs toggle into: a sync whose session check is
/// answered after "Work offline" was switched on must not mark the engine
/// online. It did, and then the offline policy was skipped (notes readable
/// while the status said locked) and switching the switch off showed
/// "online" with the server gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_offline_switched_on_during_a_sync_stays_offline() {
    let server = TestServer::start(&[]);
    server.add_user("wanda", PW);
    let proxy = Proxy::start(server.port).await;
    let clock = TestClock::system();
    let dev = device_with(&proxy.url(), "wanda", Arc::new(clock.clone())).await;
    let e = &dev.engine;
    e.save_note(None, None, "kept".into(), "safe".into())
        .await
        .unwrap();
    wait_for(e, 20, "synced", |s| s.pending == 0).await;

    // The next session check is answered late; Work offline goes on meanwhile.
    proxy.set_policy(proxy::scripted(
        [Fault::Delay(Duration::from_millis(500))],
        |r| r.target() == "session",
    ));
    let sync = tokio::spawn({
        let e = e.clone();
        async move { e.sync_now().await }
    });
    faults_reach(&proxy, 1).await;
    e.set_work_offline(true);
    let _ = sync.await.unwrap();
    assert_eq!(e.status().state, SessionState::Offline);

    // Eight days of working offline: the 7-day grace is over, the notes locked.
    clock.advance(8 * 86_400);
    assert_eq!(
        e.list_notes().await.map(|n| n.len()).unwrap_err().code(),
        "locked"
    );
    // The server is gone: switching Work offline off does not claim online.
    proxy.set_link(Link::Refused);
    e.set_work_offline(false);
    assert_ne!(e.status().state, SessionState::Online);
    // and it comes back once the server confirms the session again
    proxy.set_link(Link::Up);
    wait_state(e, SessionState::Online, 20).await;
}

/// Working offline past the offline grace shows the lock without anything
/// else happening (the status is re-evaluated while the switch is on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_runs_out_while_working_offline() {
    let server = TestServer::start(&[]);
    server.add_user("wally", PW);
    let clock = TestClock::system();
    let dev = device_with(&server.url(), "wally", Arc::new(clock.clone())).await;
    let e = &dev.engine;
    e.set_work_offline(true);
    clock.advance(8 * 86_400);
    let st = wait_state(e, SessionState::Locked, 10).await;
    assert!(st.locked_reason.unwrap().contains("offline longer"));
    e.set_work_offline(false);
    wait_state(e, SessionState::Online, 20).await;
}

/// A push black-holed mid-sync (the server never answers it) does not hold
/// the reconnect until the sync's own timeout: the heartbeat notices, the
/// sync is dropped, and once the server answers again everything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_black_holed_mid_sync_does_not_hold_the_reconnect() {
    let server = TestServer::start(&[]);
    server.add_user("bea", PW);
    let proxy = Proxy::start(server.port).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.timeouts.sync = Duration::from_secs(300);
    let e = Engine::start(
        cfg,
        Arc::new(MemoryVault::new()) as Arc<dyn Vault>,
        Arc::new(ReqwestHttp::new(Duration::from_secs(1)).unwrap()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    e.sign_in(&proxy.url(), "bea", PW).await.unwrap();
    e.set_work_offline(true);
    save_notes(&e, 20).await;
    proxy.set_policy(proxy::scripted([Fault::BlackHole], |r| r.is_push()));
    let started = Instant::now();
    e.set_work_offline(false);
    faults_reach(&proxy, 1).await;
    // The network goes (probes go unanswered too), then comes back.
    proxy.set_link(Link::BlackHoled);
    wait_state(&e, SessionState::Offline, 20).await;
    proxy.set_link(Link::Up);
    wait_for(&e, 60, "all sent", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the reconnect waited {:?}",
        started.elapsed()
    );
    assert_eq!(server_notes(&server.url(), "bea", PW).await.len(), 20);
}
