//! Several instances on one PostgreSQL under faults (issue 14): the
//! database restarted, one of three instances SIGKILLed, the network to
//! the database cut, and the database restored from a `pg_dump`. Each
//! under the load of plain HTTP clients behaving as the app does (PROTOCOL.md):
//! writers push new notes and edits through nginx, retrying a push that got
//! no answer, a 502 or a 503 with the same op ids; refreshers rotate their
//! refresh tokens, retrying the same token after a lost answer. Then every
//! acknowledged op must be on the server exactly once (lost 0, duplicated
//! 0) and every session still working (wrong sign-outs 0).
//!
//! Each test starts a PostgreSQL cluster of its own (they stop it or cut
//! its network), whatever `LATCHKEY_TEST_STORE` says, and is skipped, said,
//! when PostgreSQL is not installed. Each prints one `pg_faults summary`
//! line (RELIABILITY.md quotes them). `LATCHKEY_LONG=1` repeats each fault
//! [`LONG_ROUNDS`] times (`bash scripts/reliability.sh pg`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use latchkey_testkit::*;
use reqwest::StatusCode;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_latchkey-server");

/// Faults per test with `LATCHKEY_LONG=1` (one otherwise).
const LONG_ROUNDS: usize = 10;
/// Writers (devices of one user pushing notes) and refreshers (sessions of
/// the same user rotating their refresh tokens).
const WRITERS: usize = 4;
const REFRESHERS: usize = 3;
/// The longest a client waits on a `Retry-After` before trying again (the
/// server asks for 5 s; the tests would idle).
const RETRY_CAP: Duration = Duration::from_millis(400);
/// A client's limit for one request: past it, the request counts as hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one logical call (one push, one refresh) may take in all,
/// retries included, before the test gives up on the server.
const CALL_DEADLINE: Duration = Duration::from_secs(90);

fn rounds() -> usize {
    if std::env::var_os("LATCHKEY_LONG").is_some_and(|v| v == "1") {
        LONG_ROUNDS
    } else {
        1
    }
}

/// The load tests take turns: each runs three servers, nginx and
/// PostgreSQL, and times what it sees, on a machine of two cores.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

fn pg_missing() -> bool {
    let missing = !PgCluster::available();
    if missing {
        println!("skipped: PostgreSQL is not installed");
    }
    missing
}

/// Three instances on a private cluster, nginx in front, one user.
struct Fleet {
    cluster: Arc<PgCluster>,
    /// The database's name in the cluster.
    name: String,
    /// What the instances' `--db` says.
    db: String,
    /// Between the instances and PostgreSQL, when asked for.
    link: Option<TcpLink>,
    servers: Vec<Option<ServerProcess>>,
    ports: Vec<u16>,
    issuer: String,
    nginx: Nginx,
    user: (String, String),
}

impl Fleet {
    /// Starts it; with `through_link`, the instances reach PostgreSQL
    /// through a [`TcpLink`].
    async fn start(through_link: bool) -> Self {
        let cluster = Arc::new(PgCluster::start());
        let name = cluster.database_name();
        let link = if through_link {
            Some(TcpLink::start(Upstream::Unix(cluster.socket())).await)
        } else {
            None
        };
        let db = match &link {
            Some(link) => cluster.url_via(link.addr(), &name),
            None => cluster.url(&name),
        };
        let user = (unique("user"), password());
        add_user(BIN.as_ref(), &PathBuf::from(&db), &user.0, &user.1);
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let servers: Vec<ServerProcess> = (0..3).map(|_| instance(&db, &issuer, None)).collect();
        let ports: Vec<u16> = servers.iter().map(ServerProcess::port).collect();
        let nginx = Nginx::start(port, &ports);
        Fleet {
            cluster,
            name,
            db,
            link,
            servers: servers.into_iter().map(Some).collect(),
            ports,
            issuer,
            nginx,
            user,
        }
    }

    fn url(&self) -> String {
        self.nginx.url()
    }

    fn direct(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    /// SIGKILLs instance `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            s.kill();
        }
    }

    /// Starts instance `i` again, on its port (nginx knows it).
    fn restart(&mut self, i: usize) {
        self.kill(i);
        let mut tries = 0;
        let server = loop {
            match instance_try(&self.db, &self.issuer, Some(self.ports[i])) {
                Ok(s) => break s,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 20, "instance {i} does not start again: {e}");
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        };
        self.servers[i] = Some(server);
    }

    /// Polls until instance `i` has taken a request of the load through
    /// nginx (a POST: the test's own checks are GETs), which gives an
    /// instance it saw fail another chance only after `fail_timeout`; how
    /// long that took.
    async fn rejoined(&self, i: usize, limit: Duration) -> Duration {
        let server = self.servers[i].as_ref().expect("a running instance");
        let seen = poll_every(Duration::from_millis(50), limit, || async {
            server.stderr().contains("method=POST").then_some(())
        })
        .await;
        let (_, took) = seen.unwrap_or_else(|| panic!("nginx sent nothing to instance {i} again"));
        took
    }

    /// What the instances logged at warning level and above, for a
    /// failure's message.
    fn warnings(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.servers.iter().enumerate() {
            if let Some(s) = s {
                for line in s.stderr().lines().filter(|l| !l.contains(" INFO ")) {
                    out.push_str(&format!("[{i}] {line}\n"));
                }
            }
        }
        out
    }

    /// Polls until every instance serves a pull (a request that needs the
    /// database) with the access token `access`; how long that took.
    async fn all_serving(&self, http: &reqwest::Client, access: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        for i in 0..self.ports.len() {
            if self.servers[i].is_none() {
                continue;
            }
            let url = format!("{}/v1/sync/pull?since=0&limit=1", self.direct(i));
            let served = poll_every(Duration::from_millis(100), limit, || async {
                let res = http.get(&url).bearer_auth(access).send().await.ok()?;
                (res.status() == StatusCode::OK).then_some(())
            })
            .await;
            assert!(
                served.is_some(),
                "instance {i} still not serving {limit:?} later:\n{}",
                self.warnings()
            );
        }
        started.elapsed()
    }
}

fn instance(db: &str, issuer: &str, port: Option<u16>) -> ServerProcess {
    instance_try(db, issuer, port).unwrap_or_else(|e| panic!("the server did not start: {e}"))
}

fn instance_try(db: &str, issuer: &str, port: Option<u16>) -> Result<ServerProcess, String> {
    let mut spawn =
        Spawn::serve(db)
            .bin(BIN)
            .args(["--issuer", issuer, "--trusted-proxy", "127.0.0.1"]);
    if let Some(port) = port {
        spawn = spawn.addr(format!("127.0.0.1:{port}"));
    }
    spawn.try_start()
}

/// What one request came to.
#[derive(Debug, Clone)]
enum Outcome {
    /// An answer: its status, and whether it carried `Retry-After`.
    Answered(StatusCode, bool),
    /// None: refused, reset, or timed out (`true`: timed out).
    NoAnswer(bool),
}

#[derive(Debug, Clone)]
struct Record {
    sent: Instant,
    took: Duration,
    outcome: Outcome,
}

/// Every request the clients made.
#[derive(Default)]
struct Log {
    records: Mutex<Vec<Record>>,
}

impl Log {
    fn push(&self, r: Record) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }

    fn all(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A client of the fleet, as the app is one: retries what got no usable
/// answer, the same request again.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    log: Arc<Log>,
}

impl Client {
    fn new(base: String, log: Arc<Log>) -> Self {
        Self {
            http: web(),
            base,
            log,
        }
    }

    /// Sends the request `make` builds until it gets an answer that is not
    /// "try again": no answer at all, nginx's 502 or 504, and 503 (after its
    /// `Retry-After`, at most [`RETRY_CAP`]) are tried again, the very same
    /// request. The final status and body.
    async fn call(
        &self,
        what: &str,
        make: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> (StatusCode, Value) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < CALL_DEADLINE,
                "{what}: no answer within {CALL_DEADLINE:?}"
            );
            let sent = Instant::now();
            let res = make(&self.http, &self.base)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await;
            let took = sent.elapsed();
            let pause = match res {
                Ok(res) => {
                    let status = res.status();
                    let retry_after = res
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let body: Option<Value> = res.json().await.ok();
                    self.log.push(Record {
                        sent,
                        took: sent.elapsed(),
                        outcome: Outcome::Answered(status, retry_after.is_some()),
                    });
                    match status {
                        StatusCode::SERVICE_UNAVAILABLE => {
                            RETRY_CAP.min(Duration::from_secs(retry_after.unwrap_or(1)))
                        }
                        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                            Duration::from_millis(100)
                        }
                        _ => return (status, body.unwrap_or(Value::Null)),
                    }
                }
                Err(e) => {
                    self.log.push(Record {
                        sent,
                        took,
                        outcome: Outcome::NoAnswer(e.is_timeout()),
                    });
                    Duration::from_millis(100)
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// A new session of `user`: its access and refresh tokens.
    async fn sign_in(&self, user: &(String, String)) -> (String, String) {
        let (status, body) = self
            .call("sign-in", |http, base| {
                http.post(format!("{base}/v1/auth/token")).form(&[
                    ("grant_type", "password"),
                    ("username", user.0.as_str()),
                    ("password", user.1.as_str()),
                ])
            })
            .await;
        assert_eq!(status, StatusCode::OK, "sign-in: {body}");
        (s(&body, "access_token"), s(&body, "refresh_token"))
    }

    /// Every note the session can pull, by note id.
    async fn pull_all(&self, access: &str) -> BTreeMap<String, Value> {
        let mut since = 0;
        let mut notes = BTreeMap::new();
        loop {
            let (status, page) = self
                .call("pull", |http, base| {
                    http.get(format!("{base}/v1/sync/pull?since={since}&limit=1000"))
                        .bearer_auth(access)
                })
                .await;
            assert_eq!(status, StatusCode::OK, "pull: {page}");
            for c in page["changes"].as_array().expect("changes") {
                notes.insert(s(c, "note_id"), c.clone());
            }
            since = page["cursor"].as_i64().expect("a cursor");
            if page["more"] != true {
                return notes;
            }
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_string()
}

/// What a writer believes the server holds once it stopped.
#[derive(Default)]
struct Written {
    /// note id -> (title, body, rev) of its last acknowledged op.
    notes: BTreeMap<String, (String, String, i64)>,
    ops_acknowledged: u64,
    /// Ops answered `conflict`: nobody else edits a writer's notes, so
    /// each is an op applied twice (a retry taken for a new op).
    conflicts: u64,
    /// Its session refused, or another answer a push must never get.
    refused: Option<String>,
}

/// Pushes new notes and edits of its own notes until `stop`, each push
/// retried until it is answered (counted in `progress`); then says what it
/// believes it wrote.
async fn writer(
    client: Client,
    user: (String, String),
    w: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Written {
    let (access, _) = client.sign_in(&user).await;
    let mut rng = Rng::new(0x5eed_0000 + w as u64);
    let mut out = Written::default();
    let mut k = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut batch = Vec::new();
        for _ in 0..2 {
            k += 1;
            let words = "text ".repeat(1 + rng.below(40) as usize);
            batch.push(upsert(
                &uuid(),
                &uuid(),
                0,
                &format!("w{w} note {k}"),
                &format!("writer {w}, note {k}: {words}"),
            ));
        }
        if !out.notes.is_empty() && rng.chance(0.6) {
            let ids: Vec<&String> = out.notes.keys().collect();
            let id = ids[rng.below(ids.len() as u64) as usize].clone();
            let rev = out.notes[&id].2;
            k += 1;
            batch.push(upsert(
                &uuid(),
                &id,
                rev,
                &format!("w{w} edited {k}"),
                &format!("writer {w}, edit {k} of {id}"),
            ));
        }
        let body = ops(batch.clone());
        let (status, answer) = client
            .call("push", |http, base| {
                http.post(format!("{base}/v1/sync/push"))
                    .bearer_auth(&access)
                    .json(&body)
            })
            .await;
        if status != StatusCode::OK {
            out.refused = Some(format!("a push answered {status}: {answer}"));
            break;
        }
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results.len(), batch.len(), "{answer}");
        for (op, result) in batch.iter().zip(results) {
            assert_eq!(result["op_id"], op["op_id"], "{answer}");
            match result["status"].as_str() {
                Some("applied" | "duplicate") => {
                    let rev = result["rev"].as_i64().expect("a rev");
                    let note = (s(op, "title"), s(op, "body"), rev);
                    out.notes.insert(s(op, "note_id"), note);
                    out.ops_acknowledged += 1;
                }
                _ => out.conflicts += 1,
            }
        }
        progress.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10 + rng.below(20))).await;
    }
    out
}

/// What a refresher saw.
#[derive(Default)]
struct Refreshed {
    rotations: u64,
    /// The session ended (a refused refresh, or a refused access token at
    /// the end): a wrong sign-out.
    ended: Option<String>,
}

/// Rotates its session's refresh token until `stop` (after a lost answer
/// or a 503, the same token again, as the retry rule allows; counted in
/// `progress`), then rotates once more and checks the session with the
/// newest access token.
async fn refresher(
    client: Client,
    user: (String, String),
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Refreshed {
    let (_, mut refresh) = client.sign_in(&user).await;
    let mut access;
    let mut out = Refreshed::default();
    loop {
        let last = stop.load(Ordering::SeqCst);
        let token = refresh.clone();
        let (status, body) = client
            .call("refresh", |http, base| {
                http.post(format!("{base}/v1/auth/token")).form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                ])
            })
            .await;
        if status != StatusCode::OK {
            out.ended = Some(format!("a refresh answered {status}: {body}"));
            return out;
        }
        refresh = s(&body, "refresh_token");
        access = s(&body, "access_token");
        out.rotations += 1;
        progress.fetch_add(1, Ordering::SeqCst);
        if last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (status, body) = client
        .call("session", |http, base| {
            http.get(format!("{base}/v1/auth/session"))
                .bearer_auth(&access)
        })
        .await;
    if status != StatusCode::OK {
        out.ended = Some(format!("the session check answered {status}: {body}"));
    }
    out
}

/// Writers and refreshers running through nginx.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Log>,
    writers: Vec<tokio::task::JoinHandle<Written>>,
    refreshers: Vec<tokio::task::JoinHandle<Refreshed>>,
    /// Pushes (writers) and rotations (refreshers) acknowledged so far.
    progress: Vec<Arc<AtomicU64>>,
}

impl Load {
    fn start(fleet: &Fleet) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Log::default());
        let client = Client::new(fleet.url(), log.clone());
        let progress: Vec<Arc<AtomicU64>> = (0..WRITERS + REFRESHERS)
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let writers = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    client.clone(),
                    fleet.user.clone(),
                    w,
                    stop.clone(),
                    progress[w].clone(),
                ))
            })
            .collect();
        let refreshers = (0..REFRESHERS)
            .map(|r| {
                tokio::spawn(refresher(
                    client.clone(),
                    fleet.user.clone(),
                    stop.clone(),
                    progress[WRITERS + r].clone(),
                ))
            })
            .collect();
        Load {
            stop,
            log,
            writers,
            refreshers,
            progress,
        }
    }

    /// Waits until every writer and refresher has had `n` more pushes or
    /// rotations acknowledged.
    async fn wait_progress(&self, n: u64, limit: Duration, fleet: &Fleet) {
        let from: Vec<u64> = self
            .progress
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .collect();
        let done = poll_every(Duration::from_millis(50), limit, || async {
            let all = self
                .progress
                .iter()
                .zip(&from)
                .all(|(p, from)| p.load(Ordering::SeqCst) >= from + n);
            all.then_some(())
        })
        .await;
        assert!(
            done.is_some(),
            "no progress within {limit:?}: {:?} from {from:?}\n{}",
            self.progress
                .iter()
                .map(|p| p.load(Ordering::SeqCst))
                .collect::<Vec<_>>(),
            fleet.warnings()
        );
    }

    /// Stops the clients (each finishes the call it is in) and checks the
    /// server holds exactly what they believe they wrote.
    async fn finish(self, fleet: &Fleet) -> Outcomes {
        self.stop.store(true, Ordering::SeqCst);
        let mut written = Vec::new();
        for w in self.writers {
            written.push(w.await.expect("a writer"));
        }
        let mut refreshed = Vec::new();
        for r in self.refreshers {
            refreshed.push(r.await.expect("a refresher"));
        }
        // What the server holds, as a new device pulls it.
        let reader = Client::new(fleet.url(), Arc::new(Log::default()));
        let (access, _) = reader.sign_in(&fleet.user).await;
        let held = reader.pull_all(&access).await;

        let mut expected = BTreeMap::new();
        for w in &written {
            expected.extend(w.notes.clone());
        }
        let mut lost = Vec::new();
        for (id, (title, body, rev)) in &expected {
            match held.get(id) {
                Some(c) if c["title"] == *title && c["body"] == *body && c["rev"] == *rev => {}
                other => lost.push(format!(
                    "{id}: wrote {title:?} at rev {rev}, server {other:?}"
                )),
            }
        }
        let mut duplicated: Vec<String> = held
            .iter()
            .filter(|(id, c)| !expected.contains_key(*id) || !c["conflict_of"].is_null())
            .map(|(_, c)| c.to_string())
            .collect();
        let conflicts: u64 = written.iter().map(|w| w.conflicts).sum();
        for _ in 0..conflicts {
            duplicated.push("an op answered conflict".into());
        }
        let wrong_sign_outs: Vec<String> = written
            .iter()
            .filter_map(|w| w.refused.clone())
            .chain(refreshed.iter().filter_map(|r| r.ended.clone()))
            .collect();
        Outcomes {
            records: self.log.all(),
            ops_acknowledged: written.iter().map(|w| w.ops_acknowledged).sum(),
            notes: expected.len(),
            rotations: refreshed.iter().map(|r| r.rotations).sum(),
            lost,
            duplicated,
            wrong_sign_outs,
        }
    }
}

/// What a run came to.
struct Outcomes {
    records: Vec<Record>,
    ops_acknowledged: u64,
    notes: usize,
    rotations: u64,
    lost: Vec<String>,
    duplicated: Vec<String>,
    wrong_sign_outs: Vec<String>,
}

impl Outcomes {
    fn answered(
        &self,
        pick: impl Fn(&Record) -> bool,
        status: impl Fn(StatusCode) -> bool,
    ) -> usize {
        self.records
            .iter()
            .filter(|r| pick(r) && matches!(r.outcome, Outcome::Answered(s, _) if status(s)))
            .count()
    }

    fn unanswered(&self, timed_out: bool) -> usize {
        self.records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::NoAnswer(t) if t == timed_out))
            .count()
    }

    /// The longest the instances went on answering 503 after a fault
    /// ended: from its end to the last 503 of a request sent after it (and
    /// answered before the next fault began).
    fn unavailable_after(&self, windows: &[(Instant, Instant)]) -> Duration {
        let mut longest = Duration::ZERO;
        for (i, (_, end)) in windows.iter().enumerate() {
            let next = windows.get(i + 1).map(|(start, _)| *start);
            for r in &self.records {
                if matches!(
                    r.outcome,
                    Outcome::Answered(StatusCode::SERVICE_UNAVAILABLE, _)
                ) && r.sent > *end
                    && next.is_none_or(|n| r.sent + r.took < n)
                {
                    longest = longest.max(r.sent + r.took - *end);
                }
            }
        }
        longest
    }

    fn slowest(&self) -> Duration {
        self.records
            .iter()
            .map(|r| r.took)
            .max()
            .unwrap_or_default()
    }

    /// Prints the summary line, then checks what must hold whatever the
    /// fault: no 500, every 503 with `Retry-After`, no request hung, lost
    /// 0, duplicated 0, wrong sign-outs 0. `windows` are the faults' spans.
    fn report(
        &self,
        fault: &str,
        windows: &[(Instant, Instant)],
        recoveries: &[Duration],
        fleet: &Fleet,
    ) {
        let any = |_: &Record| true;
        let during = |r: &Record| windows.iter().any(|(a, b)| r.sent >= *a && r.sent < *b);
        let after_first = |r: &Record| windows.first().is_some_and(|(a, _)| r.sent >= *a);
        let ms = |d: &Duration| d.as_millis();
        println!(
            "pg_faults summary: fault={fault} rounds={} requests={} ok={} ok_after_fault={} \
             503={} 503_during_fault={} 503_without_retry_after={} 500={} 502_504={} \
             no_answer={} timed_out={} slowest_ms={} ops_acknowledged={} notes={} refreshes={} \
             lost={} duplicated={} wrong_sign_outs={} recovery_ms={:?} 503_after_fault_until_ms={}",
            windows.len(),
            self.records.len(),
            self.answered(any, |s| s.is_success()),
            self.answered(after_first, |s| s.is_success()),
            self.answered(any, |s| s == StatusCode::SERVICE_UNAVAILABLE),
            self.answered(during, |s| s == StatusCode::SERVICE_UNAVAILABLE),
            self.records
                .iter()
                .filter(|r| matches!(
                    r.outcome,
                    Outcome::Answered(StatusCode::SERVICE_UNAVAILABLE, false)
                ))
                .count(),
            self.answered(any, |s| s == StatusCode::INTERNAL_SERVER_ERROR),
            self.answered(any, |s| s == StatusCode::BAD_GATEWAY
                || s == StatusCode::GATEWAY_TIMEOUT),
            self.unanswered(false),
            self.unanswered(true),
            self.slowest().as_millis(),
            self.ops_acknowledged,
            self.notes,
            self.rotations,
            self.lost.len(),
            self.duplicated.len(),
            self.wrong_sign_outs.len(),
            recoveries.iter().map(ms).collect::<Vec<_>>(),
            self.unavailable_after(windows).as_millis(),
        );
        let unexpected: Vec<String> = self
            .records
            .iter()
            .filter_map(|r| match r.outcome {
                Outcome::Answered(s, _)
                    if s.is_success()
                        || s == StatusCode::SERVICE_UNAVAILABLE
                        || s == StatusCode::BAD_GATEWAY =>
                {
                    None
                }
                Outcome::NoAnswer(false) => None,
                ref other => Some(format!("{other:?} after {:?}", r.took)),
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "answers no fault may give (a 500, a 504, a hung request): {unexpected:?}\n{}",
            fleet.warnings()
        );
        let bare_503 = self
            .records
            .iter()
            .filter(|r| {
                matches!(
                    r.outcome,
                    Outcome::Answered(StatusCode::SERVICE_UNAVAILABLE, false)
                )
            })
            .count();
        assert_eq!(bare_503, 0, "503s without Retry-After");
        assert!(self.lost.is_empty(), "lost: {:#?}", self.lost);
        assert!(
            self.duplicated.is_empty(),
            "duplicated: {:#?}",
            self.duplicated
        );
        assert!(
            self.wrong_sign_outs.is_empty(),
            "wrong sign-outs: {:#?}\n{}",
            self.wrong_sign_outs,
            fleet.warnings()
        );
        assert!(self.ops_acknowledged > 0 && self.rotations > 0);
    }

    /// 503s answered while a fault lasted.
    fn unavailable_during(&self, windows: &[(Instant, Instant)]) -> usize {
        self.answered(
            |r| windows.iter().any(|(a, b)| r.sent >= *a && r.sent < *b),
            |s| s == StatusCode::SERVICE_UNAVAILABLE,
        )
    }

    /// Requests answered 2xx sent after `at`.
    fn ok_after(&self, at: Instant) -> usize {
        self.answered(|r| r.sent >= at, |s| s.is_success())
    }
}

/// A client of its own for the test's checks (not counted in the load).
async fn probe(fleet: &Fleet) -> (Client, String) {
    let client = Client::new(fleet.url(), Arc::new(Log::default()));
    let (access, _) = client.sign_in(&fleet.user).await;
    (client, access)
}

/// PostgreSQL stopped (a fast shutdown, as an administrator's restart)
/// while writers push and refreshers rotate through three instances, kept
/// down for a few seconds, started again: meanwhile every answer is 503
/// with `Retry-After`, the instances serve again by themselves, and
/// nothing is lost, applied twice, or signed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_loses_nothing() {
    if pg_missing() {
        return;
    }
    let _turn = one_at_a_time().await;
    const DOWN_FOR: Duration = Duration::from_secs(3);
    let fleet = Fleet::start(false).await;
    let (probe, access) = probe(&fleet).await;
    let load = Load::start(&fleet);
    load.wait_progress(5, Duration::from_secs(60), &fleet).await;
    let (mut windows, mut recoveries) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        let cluster = fleet.cluster.clone();
        let down_at = Instant::now();
        tokio::task::spawn_blocking(move || cluster.stop_server())
            .await
            .unwrap();
        // The outage itself.
        tokio::time::sleep(DOWN_FOR).await;
        let cluster = fleet.cluster.clone();
        tokio::task::spawn_blocking(move || cluster.start_server())
            .await
            .unwrap();
        let up_at = Instant::now();
        windows.push((down_at, up_at));
        recoveries.push(
            fleet
                .all_serving(&probe.http, &access, Duration::from_secs(30))
                .await,
        );
        load.wait_progress(5, Duration::from_secs(60), &fleet).await;
    }
    let out = load.finish(&fleet).await;
    out.report("postgres_restart", &windows, &recoveries, &fleet);
    assert!(
        out.unavailable_during(&windows) > 0,
        "no 503 while the database was down"
    );
    for r in &recoveries {
        assert!(*r < Duration::from_secs(10), "recovery took {r:?}");
    }
    let after = out.unavailable_after(&windows);
    assert!(
        after < Duration::from_secs(10),
        "503s went on {after:?} after"
    );
}

/// One of three instances SIGKILLed while writers push and refreshers
/// rotate through nginx: the clients go on through the other two (a
/// request that was in flight gets 502 or no answer and is sent again,
/// the same), and nothing is lost, applied twice, or signed out. With
/// more rounds, the instance killed is started again, and takes requests
/// through nginx again, before the next is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_under_load_loses_nothing() {
    if pg_missing() {
        return;
    }
    let _turn = one_at_a_time().await;
    let mut fleet = Fleet::start(false).await;
    let (probe, access) = probe(&fleet).await;
    let load = Load::start(&fleet);
    load.wait_progress(5, Duration::from_secs(60), &fleet).await;
    let (mut windows, mut recoveries) = (Vec::new(), Vec::new());
    let rounds = rounds();
    for round in 0..rounds {
        let victim = round % 3;
        let killed_at = Instant::now();
        fleet.kill(victim);
        // The clients go on through the other two.
        load.wait_progress(10, Duration::from_secs(60), &fleet)
            .await;
        windows.push((killed_at, Instant::now()));
        if round + 1 < rounds {
            // Back, and taking requests through nginx again before the
            // next kill.
            let restarted_at = Instant::now();
            fleet.restart(victim);
            fleet
                .all_serving(&probe.http, &access, Duration::from_secs(30))
                .await;
            fleet.rejoined(victim, Duration::from_secs(30)).await;
            recoveries.push(restarted_at.elapsed());
        }
    }
    let out = load.finish(&fleet).await;
    out.report("instance_sigkill", &windows, &recoveries, &fleet);
    let after = out.ok_after(windows[0].0);
    assert!(after > 0, "nothing succeeded after the kill");
}

/// The network between the three instances and PostgreSQL cut for 10 s
/// under load: open connections black-holed (no byte either way, neither
/// end told), new ones refused. When the link comes back, the
/// connections that were open stay dead, as after a partition long
/// enough for TCP to give up or a failover: each instance must notice by
/// its own time limits. Meanwhile answers are 503 with `Retry-After` (or
/// slow, never hung), then the instances serve again by themselves, and
/// nothing is lost, applied twice, or signed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_network_to_postgres_cut_for_10_s_loses_nothing() {
    if pg_missing() {
        return;
    }
    let _turn = one_at_a_time().await;
    const CUT_FOR: Duration = Duration::from_secs(10);
    let fleet = Fleet::start(true).await;
    let link = fleet.link.as_ref().expect("a link");
    let (probe, access) = probe(&fleet).await;
    let load = Load::start(&fleet);
    load.wait_progress(5, Duration::from_secs(60), &fleet).await;
    let (mut windows, mut recoveries) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        let cut_at = Instant::now();
        link.cut(NewConnections::Refused);
        // The cut itself.
        tokio::time::sleep(CUT_FOR).await;
        link.lose_open_connections();
        link.heal();
        windows.push((cut_at, Instant::now()));
        recoveries.push(
            fleet
                .all_serving(&probe.http, &access, Duration::from_secs(40))
                .await,
        );
        load.wait_progress(5, Duration::from_secs(60), &fleet).await;
    }
    let out = load.finish(&fleet).await;
    out.report("network_cut_10s", &windows, &recoveries, &fleet);
    assert!(
        out.unavailable_during(&windows) > 0,
        "no 503 while the network was cut"
    );
    // The server's own limits (5 s for a connection, 5 s for the
    // database's answers) bound every request, cut or not.
    let slowest = out.slowest();
    assert!(
        slowest < Duration::from_secs(15),
        "a request took {slowest:?}"
    );
    for r in &recoveries {
        assert!(*r < Duration::from_secs(20), "recovery took {r:?}");
    }
    // Even for a user whose row a vanished push held: PostgreSQL ends it
    // 10 s after it went idle, at most, whatever waited behind it.
    let after = out.unavailable_after(&windows);
    assert!(
        after < Duration::from_secs(15),
        "503s went on {after:?} after"
    );
}

/// A device ahead of a database restored from an older `pg_dump`: its
/// pull is 409 `cursor_ahead`; following PROTOCOL.md it pulls from 0,
/// sends again what the server lacks or holds at an older text, and the
/// server ends up holding everything the device has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_heals_a_database_restored_from_a_pg_dump() {
    if pg_missing() {
        return;
    }
    let mut fleet = Fleet::start(false).await;
    let device = Client::new(fleet.url(), Arc::new(Log::default()));
    let (access, _) = device.sign_in(&fleet.user).await;
    // The device's notes: id -> (title, body, rev).
    let mut mine: BTreeMap<String, (String, String, i64)> = BTreeMap::new();
    let push = |batch: Vec<Value>| {
        let device = device.clone();
        let access = access.clone();
        async move {
            let body = ops(batch.clone());
            let (status, answer) = device
                .call("push", |http, base| {
                    http.post(format!("{base}/v1/sync/push"))
                        .bearer_auth(&access)
                        .json(&body)
                })
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            let mut acked = Vec::new();
            for (op, result) in batch.iter().zip(answer["results"].as_array().unwrap()) {
                assert_eq!(result["status"], "applied", "{answer}");
                acked.push((
                    s(op, "note_id"),
                    (
                        s(op, "title"),
                        s(op, "body"),
                        result["rev"].as_i64().unwrap(),
                    ),
                ));
            }
            acked
        }
    };
    let new_note = |k: usize| {
        upsert(
            &uuid(),
            &uuid(),
            0,
            &format!("note {k}"),
            &format!("body {k}"),
        )
    };
    mine.extend(push((0..6).map(new_note).collect()).await);
    let before_dump = device.pull_all(&access).await.len();
    assert_eq!(before_dump, 6);

    let cluster = fleet.cluster.clone();
    let name = fleet.name.clone();
    let dump = tokio::task::spawn_blocking(move || cluster.dump(&name))
        .await
        .unwrap();

    // After the backup: two edits and three new notes.
    let edited: Vec<String> = mine.keys().take(2).cloned().collect();
    let edits = edited
        .iter()
        .map(|id| {
            upsert(
                &uuid(),
                id,
                mine[id].2,
                "edited after the backup",
                "newer text",
            )
        })
        .chain((6..9).map(new_note))
        .collect();
    mine.extend(push(edits).await);
    let (status, page) = device
        .call("pull", |http, base| {
            http.get(format!("{base}/v1/sync/pull?since=0"))
                .bearer_auth(&access)
        })
        .await;
    assert_eq!(status, StatusCode::OK);
    let cursor = page["cursor"].as_i64().unwrap();

    // The instances stopped, the dump restored, the instances started.
    for i in 0..3 {
        fleet.kill(i);
    }
    let cluster = fleet.cluster.clone();
    let name = fleet.name.clone();
    tokio::task::spawn_blocking(move || cluster.restore(&name, &dump))
        .await
        .unwrap();
    for i in 0..3 {
        fleet.restart(i);
    }

    // The device is ahead.
    let (status, body) = device
        .call("pull", |http, base| {
            http.get(format!("{base}/v1/sync/pull?since={cursor}"))
                .bearer_auth(&access)
        })
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "cursor_ahead", "{body}");
    // It pulls from 0 and sends again what the server lacks or holds at
    // an older text (a lower rev than the device's).
    let held = device.pull_all(&access).await;
    assert_eq!(
        held.len(),
        6,
        "the restored database holds the backup's notes"
    );
    let mut again = Vec::new();
    for (id, (title, body, rev)) in &mine {
        match held.get(id) {
            None => again.push(upsert(&uuid(), id, 0, title, body)),
            Some(c)
                if c["rev"].as_i64().unwrap() < *rev
                    && (c["title"] != *title || c["body"] != *body) =>
            {
                again.push(upsert(&uuid(), id, c["rev"].as_i64().unwrap(), title, body));
            }
            Some(_) => {}
        }
    }
    assert_eq!(
        again.len(),
        5,
        "two edits and three new notes to send again"
    );
    mine.extend(push(again).await);

    // The server holds every note of the device, with its text, and
    // nothing else.
    let held = device.pull_all(&access).await;
    let held: BTreeMap<String, (String, String)> = held
        .into_iter()
        .map(|(id, c)| (id, (s(&c, "title"), s(&c, "body"))))
        .collect();
    let want: BTreeMap<String, (String, String)> = mine
        .into_iter()
        .map(|(id, (t, b, _))| (id, (t, b)))
        .collect();
    assert_eq!(held, want);
    println!(
        "pg_faults summary: fault=restore_from_pg_dump notes_at_backup=6 written_after=5 \
         sent_again=5 held_at_the_end={} lost=0 duplicated=0",
        held.len()
    );
}
