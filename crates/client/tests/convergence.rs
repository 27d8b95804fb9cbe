//! Convergence (issue 5, item 4): property tests over any interleaving of
//! note edits and deletes on two devices, random sync points, "Work offline"
//! switches, app restarts and random network faults, against one real server.
//!
//! Each case is a fresh user with two devices (two engines, each with its
//! own data dir and keychain) on one `latchkey-server` process shared by the
//! whole run. The engines' own timers are set to an hour and `/healthz` is
//! unreachable for them (so turning "Work offline" off starts no sync of its
//! own), so the only syncs are the case's: a case replays exactly, and
//! proptest can shrink it.
//! Faults go through [`TestHttp::plan`]: a request that fails before it
//! leaves, or one the server handles whose answer is lost (a push applied but
//! never acknowledged, a pull or session check that never comes back).
//!
//! A sync that succeeds must leave nothing pending (nothing else runs
//! meanwhile). After the steps, faults and "Work offline" are turned off and
//! the devices sync A, B, A: enough by design, as A sends everything, B sends
//! everything and fetches all, and A fetches what B sent. Then:
//!
//! 1. **Convergence.** A, B and the server hold the same notes: the same ids,
//!    titles, bodies, revs, deleted flags and `conflict_of`, tombstones and
//!    conflict copies included, and nothing is pending on either device.
//!    (`updated_at` is left out: a device keeps its own save time.)
//! 2. **Nothing typed is lost.** Every save writes a body no other save
//!    writes. A body *B* may disappear only if somebody replaced it knowingly:
//!    a device saved over, or deleted, a note while that device's copy of the
//!    note showed *B* (its own earlier text, or one it had pulled). DESIGN.md's
//!    rules give exactly this: later edits of an unsent op replace its text
//!    (the user's own later text), a sent op is frozen and an edit meanwhile
//!    queues a follow-up, a push whose `base_rev` is stale keeps the server's
//!    note and stores the pushed text as a conflict copy (`conflict_of` set),
//!    and a delete that conflicts loses to the edit (the note stays). So every
//!    body never replaced that way is, at the end, the body of exactly one
//!    live note on the server (the note itself or a conflict copy).
//! 3. **Nothing duplicated, nothing invented.** No body is on more than one
//!    live server note, and every live body is one that some save wrote.
//!
//! Short: 64 cases inside `cargo test`. Long: `LATCHKEY_LONG=1` runs 1000
//! (`bash scripts/reliability.sh convergence`). `PROPTEST_CASES` overrides
//! both. A failing case is shrunk and its seed kept in
//! `convergence.proptest-regressions` beside this file, replayed first on
//! every run.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use latchkey_client::{Config, Engine, SystemClock, Vault};
use latchkey_testkit::*;
use proptest::prelude::*;
use proptest::test_runner::{
    Config as ProptestConfig, FileFailurePersistence, TestCaseError, TestRunner,
};
use uuid::Uuid;

const DEVICES: [&str; 2] = ["A", "B"];

/// One thing that happens during a case.
#[derive(Debug, Clone)]
enum Step {
    /// A new note.
    Create { dev: usize, title: usize },
    /// Saves new text over one of the notes the device lists (the `note`-th,
    /// modulo their number, in body order).
    Edit { dev: usize, note: u8, title: usize },
    /// Deletes one of the notes the device lists (picked as for `Edit`).
    Delete { dev: usize, note: u8 },
    /// "Sync now" on one device.
    Sync { dev: usize },
    /// Flips the device's "Work offline" switch.
    ToggleOffline { dev: usize },
    /// Quits the app and starts it again (offline, from the keychain and the
    /// local database).
    Restart { dev: usize },
    /// The device's next `after` requests pass, the one after that meets
    /// `fault`.
    Fault {
        dev: usize,
        after: usize,
        fault: Fault,
    },
}

const TITLES: [&str; 4] = ["", "shopping", "Ünïcødé ✓ title", "a \"quoted\" <title>"];
/// Texture added to the unique part of a body.
const FLAVOURS: [&str; 3] = ["", "\nsecond line ✓", " with \"quotes\" & <tags>"];

fn step() -> impl Strategy<Value = Step> {
    let dev = 0..DEVICES.len();
    let title = 0..TITLES.len();
    // Often the first note, so that both devices change the same one.
    let note = || prop_oneof![Just(0u8), any::<u8>()];
    prop_oneof![
        2 => (dev.clone(), title.clone()).prop_map(|(dev, title)| Step::Create { dev, title }),
        6 => (dev.clone(), note(), title)
            .prop_map(|(dev, note, title)| Step::Edit { dev, note, title }),
        1 => (dev.clone(), note()).prop_map(|(dev, note)| Step::Delete { dev, note }),
        5 => dev.clone().prop_map(|dev| Step::Sync { dev }),
        1 => dev.clone().prop_map(|dev| Step::ToggleOffline { dev }),
        1 => dev.clone().prop_map(|dev| Step::Restart { dev }),
        3 => (dev, 0..4usize, prop_oneof![Just(Fault::DropBeforeRequest), Just(Fault::DropResponse)])
            .prop_map(|(dev, after, fault)| Step::Fault { dev, after, fault }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..48)
}

/// Figures for RELIABILITY.md, summed over every case run (shrinking included).
#[derive(Debug, Default)]
struct Stats {
    cases: u64,
    steps: u64,
    saves: u64,
    deletes: u64,
    restarts: u64,
    syncs_ok: u64,
    syncs_failed: u64,
    faults_planned: u64,
    faults_injected: u64,
    conflict_copies: u64,
}

/// A note as stored, less its local save time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NoteState {
    title: String,
    body: String,
    rev: i64,
    deleted: bool,
    conflict_of: Option<Uuid>,
}

type Notes = BTreeMap<Uuid, NoteState>;

struct Device {
    name: &'static str,
    /// None only while it restarts.
    app: Option<Engine>,
    http: TestHttp,
    vault: MemoryVault,
    db: PathBuf,
    dir: tempfile::TempDir,
}

impl Device {
    fn engine(&self) -> &Engine {
        self.app.as_ref().expect("the device is running")
    }
}

/// The engine with every timer of its own set to an hour, and `/healthz`
/// unreachable (so turning "Work offline" off starts no sync of its own):
/// it syncs when the case says so and only then.
async fn start(
    name: &str,
    dir: &std::path::Path,
    vault: &MemoryVault,
    http: &TestHttp,
) -> Result<Engine, String> {
    let mut config: Config = test_config(dir);
    let hour = Duration::from_secs(3600);
    config.heartbeat = hour;
    config.sync_interval = hour;
    config.edit_debounce = hour;
    config.backoff_min = hour;
    config.backoff_max = hour;
    *http.unreachable.lock().unwrap() = vec!["healthz".into()];
    Engine::start(
        config,
        Arc::new(vault.clone()) as Arc<dyn Vault>,
        Arc::new(http.clone()),
        Arc::new(SystemClock),
    )
    .await
    .map_err(|e| format!("{name}: start: {e}"))
}

async fn device(name: &'static str, url: &str, user: &str) -> Result<Device, String> {
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let engine = start(name, dir.path(), &vault, &http).await?;
    let st = engine
        .sign_in(url, user, PW)
        .await
        .map_err(|e| format!("{name}: sign in: {e}"))?;
    // Signing in starts one sync of the engine's own: let it finish
    // before the case begins.
    wait_for(&engine, 30, "the first sync", |s| {
        s.last_sync_result.is_some()
    })
    .await;
    let db = latchkey_client::engine::user_dir(
        dir.path(),
        st.server.as_deref().unwrap(),
        &st.user.as_ref().unwrap().id,
    )
    .join("notes.db");
    Ok(Device {
        name,
        app: Some(engine),
        http,
        vault,
        db,
        dir,
    })
}

/// Every note in the device's database, tombstones included.
fn local_notes(d: &Device) -> Result<Notes, String> {
    let read = || -> rusqlite::Result<Notes> {
        let conn = rusqlite::Connection::open_with_flags(
            &d.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut stmt =
            conn.prepare("SELECT note_id, title, body, rev, deleted, conflict_of FROM notes")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                NoteState {
                    title: r.get(1)?,
                    body: r.get(2)?,
                    rev: r.get(3)?,
                    deleted: r.get(4)?,
                    conflict_of: r
                        .get::<_, Option<String>>(5)?
                        .map(|s| Uuid::parse_str(&s).unwrap()),
                },
            ))
        })?;
        rows.map(|r| r.map(|(id, n)| (Uuid::parse_str(&id).unwrap(), n)))
            .collect()
    };
    read().map_err(|e| format!("{}: reading its database: {e}", d.name))
}

async fn server_state(url: &str, user: &str) -> Notes {
    server_changes(url, user, PW)
        .await
        .into_iter()
        .map(|c| {
            (
                c.note_id,
                NoteState {
                    title: c.title,
                    body: c.body,
                    rev: c.rev,
                    deleted: c.deleted,
                    conflict_of: c.conflict_of,
                },
            )
        })
        .collect()
}

/// The device's live notes in an order that does not depend on ids or
/// clocks, so a case picks the same note every time it runs.
async fn listed(d: &Device) -> Result<Vec<latchkey_client::Note>, String> {
    let mut notes = d
        .engine()
        .list_notes()
        .await
        .map_err(|e| format!("{}: list: {e}", d.name))?;
    notes.sort_by(|a, b| (&a.body, &a.title).cmp(&(&b.body, &b.title)));
    Ok(notes)
}

/// The note an edit or delete is about to replace (the `note`-th the device
/// lists, modulo their number), its body marked as knowingly replaced.
async fn pick(
    d: &Device,
    note: u8,
    ledger: &mut Ledger,
) -> Result<Option<latchkey_client::Note>, String> {
    let mut notes = listed(d).await?;
    if notes.is_empty() {
        return Ok(None);
    }
    let n = notes.swap_remove(usize::from(note) % notes.len());
    ledger.replaced.insert(n.body.clone());
    Ok(Some(n))
}

/// What a case wrote and what it knowingly replaced.
#[derive(Default)]
struct Ledger {
    written: Vec<String>,
    replaced: HashSet<String>,
}

async fn run_step(
    step: &Step,
    devs: &mut [Device],
    ledger: &mut Ledger,
    stats: &mut Stats,
) -> Result<(), String> {
    match *step {
        Step::Create { dev, title } => {
            let d = &devs[dev];
            let body = new_body(ledger, d.name);
            d.engine()
                .save_note(None, None, TITLES[title].into(), body)
                .await
                .map_err(|e| format!("{}: create: {e}", d.name))?;
            stats.saves += 1;
        }
        Step::Edit { dev, note, title } => {
            let d = &devs[dev];
            let Some(n) = pick(d, note, ledger).await? else {
                return Ok(());
            };
            let body = new_body(ledger, d.name);
            d.engine()
                .save_note(Some(n.id), None, TITLES[title].into(), body)
                .await
                .map_err(|e| format!("{}: edit: {e}", d.name))?;
            stats.saves += 1;
        }
        Step::Delete { dev, note } => {
            let d = &devs[dev];
            let Some(n) = pick(d, note, ledger).await? else {
                return Ok(());
            };
            d.engine()
                .delete_note(n.id)
                .await
                .map_err(|e| format!("{}: delete: {e}", d.name))?;
            stats.deletes += 1;
        }
        Step::Sync { dev } => {
            let d = &devs[dev];
            match d.engine().sync_now().await {
                // Nothing else runs meanwhile: a sync that succeeds leaves
                // nothing pending.
                Ok(st) if st.pending > 0 => {
                    return Err(format!(
                        "{}: sync succeeded with {} pending",
                        d.name, st.pending
                    ));
                }
                Ok(_) => stats.syncs_ok += 1,
                // What a fault or the switch may cause; anything else is a bug.
                Err(e) if matches!(e.code(), "network" | "working_offline") => {
                    stats.syncs_failed += 1
                }
                Err(e) => return Err(format!("{}: sync: {} ({e})", d.name, e.code())),
            }
        }
        Step::ToggleOffline { dev } => {
            let e = devs[dev].engine();
            e.set_work_offline(!e.status().work_offline);
        }
        Step::Restart { dev } => {
            let d = &mut devs[dev];
            let work_offline = d.engine().status().work_offline;
            // The old engine is gone before the new one opens the data.
            d.app = None;
            d.app = Some(start(d.name, d.dir.path(), &d.vault, &d.http).await?);
            let st = d.engine().status();
            if st.state != latchkey_client::SessionState::Offline {
                return Err(format!("{}: restarted as {:?}", d.name, st.state));
            }
            if work_offline {
                d.engine().set_work_offline(true);
            }
            stats.restarts += 1;
        }
        Step::Fault { dev, after, fault } => {
            let mut plan = devs[dev].http.plan.lock().unwrap();
            plan.clear();
            plan.extend(std::iter::repeat_n(None, after));
            plan.push_back(Some(fault));
            stats.faults_planned += 1;
        }
    }
    Ok(())
}

fn new_body(ledger: &mut Ledger, dev: &str) -> String {
    let n = ledger.written.len();
    let body = format!("{dev} save {n}{}", FLAVOURS[n % FLAVOURS.len()]);
    ledger.written.push(body.clone());
    body
}

/// Turns faults and "Work offline" off and syncs A, B, A: enough, since
/// nothing else happens meanwhile (A sends all it has, B sends all it has
/// and fetches everything, A fetches what B sent). Then nothing may be
/// pending and all three must agree; returns the agreed notes.
async fn settle(devs: &[Device], url: &str, user: &str) -> Result<Notes, String> {
    for d in devs {
        d.http.plan.lock().unwrap().clear();
        d.engine().set_work_offline(false);
    }
    for d in [&devs[0], &devs[1], &devs[0]] {
        let st = d
            .engine()
            .sync_now()
            .await
            .map_err(|e| format!("{}: sync with no faults: {e}", d.name))?;
        if st.pending > 0 {
            return Err(format!(
                "{}: sync with no faults left {} pending",
                d.name, st.pending
            ));
        }
    }
    let server = server_state(url, user).await;
    let mut why = String::new();
    for d in devs {
        why += &diff(d.name, &local_notes(d)?, &server);
    }
    if why.is_empty() {
        Ok(server)
    } else {
        Err(format!(
            "A, B and the server differ after A, B, A synced:{why}"
        ))
    }
}

fn diff(name: &str, local: &Notes, server: &Notes) -> String {
    let mut out = String::new();
    for id in local
        .keys()
        .chain(server.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (l, s) = (local.get(id), server.get(id));
        if l != s {
            out += &format!(
                "\n  {name} {id}: device {l:?}\n  {:>w$} server {s:?}",
                "",
                w = name.len() + 37
            );
        }
    }
    out
}

/// Checks 2 and 3 of the module docs on the settled notes.
fn check_survival(ledger: &Ledger, notes: &Notes) -> Result<(), String> {
    let mut live: BTreeMap<&str, usize> = BTreeMap::new();
    for n in notes.values().filter(|n| !n.deleted) {
        *live.entry(n.body.as_str()).or_default() += 1;
    }
    let mut problems = Vec::new();
    for body in &ledger.written {
        let count = live.get(body.as_str()).copied().unwrap_or(0);
        if count > 1 {
            problems.push(format!("{body:?} is on {count} notes"));
        }
        if count == 0 && !ledger.replaced.contains(body) {
            problems.push(format!("{body:?} was lost (nobody replaced it)"));
        }
    }
    let written: HashSet<&str> = ledger.written.iter().map(String::as_str).collect();
    for body in live.keys().filter(|b| !written.contains(*b)) {
        problems.push(format!("{body:?} was never written"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

async fn run_case(url: &str, user: &str, steps: &[Step], stats: &mut Stats) -> Result<(), String> {
    let (a, b) = tokio::join!(device("A", url, user), device("B", url, user));
    let mut devs = [a?, b?];
    let mut ledger = Ledger::default();
    let mut done = Vec::new();
    for step in steps {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            run_step(step, &mut devs, &mut ledger, stats),
        )
        .await
        .unwrap_or_else(|_| Err(format!("{step:?} took over 30 s")));
        r.map_err(|e| format!("{e}\n  after {done:?}"))?;
        done.push(step);
    }
    stats.faults_injected += devs
        .iter()
        .map(|d| d.http.faults_injected.load(Ordering::SeqCst) as u64)
        .sum::<u64>();
    let notes = tokio::time::timeout(Duration::from_secs(60), settle(&devs, url, user))
        .await
        .unwrap_or_else(|_| Err("the final syncs took over 60 s".into()))?;
    stats.conflict_copies += notes.values().filter(|n| n.conflict_of.is_some()).count() as u64;
    check_survival(&ledger, &notes).map_err(|e| format!("{e}\n  notes: {notes:#?}"))
}

fn cases() -> u32 {
    if let Some(n) = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::var_os("LATCHKEY_LONG").is_some_and(|v| v == "1") {
        1000
    } else {
        64
    }
}

/// One server and one runtime for many cases; a fresh user per case.
struct Harness {
    server: TestServer,
    rt: tokio::runtime::Runtime,
}

impl Harness {
    fn new() -> Self {
        Self {
            server: TestServer::start(&[]),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn run(&self, steps: &[Step], stats: &mut Stats) -> Result<(), String> {
        let user = unique("conv");
        self.server.add_user(&user, PW);
        stats.cases += 1;
        stats.steps += steps.len() as u64;
        self.rt
            .block_on(run_case(&self.server.url(), &user, steps, stats))
    }
}

#[test]
fn two_devices_converge_and_lose_no_edit() {
    let harness = Harness::new();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(),
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        // A case costs a fraction of a second: bound the shrinking.
        max_shrink_iters: 500,
        ..ProptestConfig::default()
    });
    let stats = RefCell::new(Stats::default());
    let started = Instant::now();
    let result = runner.run(&steps(), |steps| {
        harness
            .run(&steps, &mut stats.borrow_mut())
            .map_err(TestCaseError::fail)
    });
    let Stats {
        cases,
        steps,
        saves,
        deletes,
        restarts,
        syncs_ok,
        syncs_failed,
        faults_planned,
        faults_injected,
        conflict_copies,
    } = stats.into_inner();
    println!(
        "convergence summary: {cases} cases ({}), {steps} steps: {saves} saves, {deletes} deletes, \
         {restarts} restarts, {syncs_ok} syncs ok + {syncs_failed} failed, {faults_injected} faults \
         injected of {faults_planned} planned, {conflict_copies} conflict copies, {:.1} s",
        if result.is_ok() {
            "all passed"
        } else {
            "FAILED"
        },
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

// Cases the property found, kept as they shrank.

/// A push that failed left its op marked sent; a delete queued behind it
/// waited for its base. The sync that resent the op learnt the base from
/// the answer, but stopped there: "synced", with the delete still pending
/// until the next sync (30 s later), and the other device none the wiser.
#[test]
fn an_edit_queued_behind_a_resent_op_goes_in_the_same_sync() {
    let steps = [
        Step::Fault {
            dev: 0,
            after: 1,
            fault: Fault::DropBeforeRequest,
        },
        Step::Create { dev: 0, title: 0 },
        Step::Sync { dev: 0 },
        Step::Delete { dev: 0, note: 0 },
        Step::Sync { dev: 0 },
    ];
    Harness::new().run(&steps, &mut Stats::default()).unwrap();
}
