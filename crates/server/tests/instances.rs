//! Several server instances on one store (issue 14, PROTOCOL.md "Several
//! instances, and store outages"): every rule that must hold across
//! instances, with requests spread over three of them, directly and
//! through nginx running the shipped `deploy/nginx` config. On SQLite (the
//! instances share one file) and, with `LATCHKEY_TEST_STORE=postgres`, on
//! a private PostgreSQL cluster.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use latchkey_testkit::*;
use reqwest::StatusCode;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_latchkey-server");

/// Three instances on one database, nginx in front, one user.
struct Cluster {
    _test_db: TestDb,
    /// The database, as `--db` takes it.
    db: PathBuf,
    servers: Vec<ServerProcess>,
    nginx: Nginx,
    user: (String, String),
    http: reqwest::Client,
}

impl Cluster {
    fn start(n: usize) -> Self {
        let test_db = TestDb::new("s.db");
        let db = PathBuf::from(test_db.arg());
        let user = (unique("user"), password());
        add_user(BIN.as_ref(), &db, &user.0, &user.1);
        let (servers, nginx) = behind_nginx(free_port(), n, || Spawn::serve(&db).bin(BIN));
        Cluster {
            _test_db: test_db,
            db,
            servers,
            nginx,
            user,
            http: web(),
        }
    }

    /// Instance `i`'s URL for `path` (`None`: through nginx).
    fn url(&self, i: Option<usize>, path: &str) -> String {
        match i {
            Some(i) => format!("{}{path}", self.servers[i].url()),
            None => format!("{}{path}", self.nginx.url()),
        }
    }

    /// Signs the user in through instance `i`; the token answer.
    async fn sign_in(&self, i: Option<usize>) -> Value {
        let res = self
            .http
            .post(self.url(i, "/v1/auth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", &self.user.0),
                ("password", &self.user.1),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    async fn refresh(&self, i: usize, token: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .post(self.url(Some(i), "/v1/auth/token"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap_or(Value::Null))
    }

    async fn session_status(&self, i: usize, access: &str) -> StatusCode {
        self.http
            .get(self.url(Some(i), "/v1/auth/session"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Polls until every instance refuses `access`; how long it took.
    async fn refused_everywhere(&self, access: &str) -> Duration {
        let started = Instant::now();
        for i in 0..self.servers.len() {
            let refused = poll_every(
                Duration::from_millis(20),
                Duration::from_secs(5),
                || async {
                    (self.session_status(i, access).await == StatusCode::UNAUTHORIZED).then_some(())
                },
            )
            .await;
            assert!(refused.is_some(), "instance {i} still takes the token");
        }
        started.elapsed()
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_string()
}

/// Per-user revs are allocated in order and become visible in order,
/// whichever instance takes a push: a pull through any instance never
/// skips a rev that commits later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revs_become_visible_in_order_whichever_instance_takes_the_push() {
    let c = Cluster::start(3);
    let at = s(&c.sign_in(None).await, "access_token");
    const PER_WRITER: usize = 40;
    let writers = (0..3).map(|i| {
        let (http, url, at) = (c.http.clone(), c.url(Some(i), "/v1/sync/push"), at.clone());
        tokio::spawn(async move {
            for _ in 0..PER_WRITER {
                let res = http
                    .post(&url)
                    .bearer_auth(&at)
                    .json(&ops(vec![upsert(&uuid(), &uuid(), 0, "n", "")]))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    // A reader pulls round robin while the writers push: every page must
    // start right after its cursor and hold consecutive revs.
    let total = 3 * PER_WRITER as i64;
    let (mut cursor, mut pulls) = (0i64, 0usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cursor < total {
        assert!(Instant::now() < deadline, "stuck at {cursor} of {total}");
        let page: Value = c
            .http
            .get(c.url(Some(pulls % 3), &format!("/v1/sync/pull?since={cursor}")))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pulls += 1;
        for change in page["changes"].as_array().unwrap() {
            let rev = change["rev"].as_i64().unwrap();
            assert_eq!(rev, cursor + 1, "a rev skipped (pull {pulls}): {page}");
            cursor = rev;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(cursor, total);
}

/// One refresh token presented to two instances at the same moment is
/// spent once: both answer 200 (the loser by the retry rule), and only one
/// of the two new refresh tokens stays live; the other is reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_token_raced_through_two_instances_is_spent_once() {
    let c = Cluster::start(3);
    let mut first_live = 0;
    for round in 0..10 {
        let t = c.sign_in(Some(round % 3)).await;
        let rt = s(&t, "refresh_token");
        let ((sa, a), (sb, b)) = tokio::join!(c.refresh(0, &rt), c.refresh(1, &rt));
        assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK), "{a} {b}");
        let (ra, rb) = (s(&a, "refresh_token"), s(&b, "refresh_token"));
        if ra == rb {
            // Both answers carry the one live successor.
            assert_eq!(c.refresh(2, &ra).await.0, StatusCode::OK);
            first_live += 1;
            continue;
        }
        let (s1, _) = c.refresh(2, &ra).await;
        if s1 == StatusCode::OK {
            first_live += 1;
            let (s2, body) = c.refresh(2, &rb).await;
            assert_eq!(s2, StatusCode::BAD_REQUEST, "two live successors: {body}");
            assert_eq!(body["reason"], "reused", "{body}");
        } else {
            assert_eq!(s1, StatusCode::BAD_REQUEST);
        }
    }
    assert!(
        first_live > 0,
        "never found the live one first in 10 rounds"
    );
}

/// A revocation made through one instance, by sign-out or by the CLI, is
/// refused by every instance within a second; so is a key rotation's
/// effect seen everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_and_key_rotations_reach_every_instance_within_a_second() {
    let c = Cluster::start(3);
    // Sign-out through instance 1 of a session made through instance 0.
    let t = c.sign_in(Some(0)).await;
    let at = s(&t, "access_token");
    for i in 0..3 {
        assert_eq!(c.session_status(i, &at).await, StatusCode::OK);
    }
    let res = c
        .http
        .post(c.url(Some(1), "/v1/auth/revoke"))
        .form(&[("token", s(&t, "refresh_token"))])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let took = c.refused_everywhere(&at).await;
    println!("a revocation through instance 1 reached all three in {took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // The CLI, another process on the same store.
    let t = c.sign_in(None).await;
    let at = s(&t, "access_token");
    let db = c.db.to_str().unwrap();
    let out = run_cli(
        BIN.as_ref(),
        &["session", "revoke", "--username", &c.user.0, "--db", db],
        None,
        &[],
    );
    assert!(out.status.success());
    let took = c.refused_everywhere(&at).await;
    println!("a revocation by the CLI reached all three instances in {took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // A key rotation: every instance serves the new key within a second.
    let out = run_cli(BIN.as_ref(), &["keys", "rotate", "--db", db], None, &[]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let kid = said
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("{said}"))
        .trim_end_matches(';')
        .to_string();
    let started = Instant::now();
    for i in 0..3 {
        let url = c.url(Some(i), "/.well-known/jwks.json");
        let seen = poll_every(
            Duration::from_millis(20),
            Duration::from_secs(5),
            || async {
                let jwks = c.http.get(&url).send().await.ok()?.text().await.ok()?;
                jwks.contains(&kid).then_some(())
            },
        )
        .await;
        assert!(seen.is_some(), "instance {i} never served {kid}");
    }
    assert!(started.elapsed() < Duration::from_millis(1500));
    // New sign-ins anywhere carry it, and every instance takes them.
    let at = s(&c.sign_in(Some(2)).await, "access_token");
    let header = jwt_part(&at, 0);
    assert_eq!(header["kid"], kid.as_str());
    for i in 0..3 {
        assert_eq!(c.session_status(i, &at).await, StatusCode::OK);
    }
}

/// A live-updates stream held by one instance hears, within a second, of
/// a push taken by another, also through nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_on_one_instance_hears_of_a_push_on_another_within_a_second() {
    let c = Cluster::start(3);
    let at = s(&c.sign_in(None).await, "access_token");
    for (stream_at, push_at) in [(Some(0), Some(1)), (Some(2), Some(0)), (None, None)] {
        let mut stream = c
            .http
            .get(c.url(stream_at, "/v1/sync/events"))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        let pushed: Value = c
            .http
            .post(c.url(push_at, "/v1/sync/push"))
            .bearer_auth(&at)
            .json(&ops(vec![upsert(&uuid(), &uuid(), 0, "n", "")]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let started = Instant::now();
        let want = format!("{{\"cursor\":{}}}", pushed["cursor"]);
        let mut seen = String::new();
        while !seen.contains(&want) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
                .await
                .unwrap_or_else(|_| panic!("{want} not heard: {seen:?}"))
                .unwrap()
                .expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let took = started.elapsed();
        println!("a stream on {stream_at:?} heard a push on {push_at:?} in {took:?}");
        assert!(
            took < Duration::from_millis(1500),
            "{stream_at:?} <- {push_at:?}: {took:?}"
        );
    }
}

/// Sign-in throttling is counted in the store: guesses spread over three
/// instances (through nginx, the client named by X-Forwarded-For) get one
/// budget of 10, not three, even when they come all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_give_an_attacker_one_budget_not_three() {
    let c = Cluster::start(3);
    let guess = |client: &'static str| {
        let (http, url, name) = (
            c.http.clone(),
            c.url(None, "/v1/auth/token"),
            c.user.0.clone(),
        );
        async move {
            http.post(url)
                .header("x-forwarded-for", client)
                .form(&[
                    ("grant_type", "password"),
                    ("username", name.as_str()),
                    ("password", "a wrong guess"),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Thirty guesses at once, round robin over the instances.
    let answers = futures_join_all((0..30).map(|_| guess("203.0.113.7"))).await;
    let wrong = answers
        .iter()
        .filter(|s| **s == StatusCode::BAD_REQUEST)
        .count();
    let slowed = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((wrong, slowed), (10, 20), "{answers:?}");
    // One after another through each instance: still refused.
    for i in 0..3 {
        let res = c
            .http
            .post(c.url(Some(i), "/v1/auth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", &c.user.0),
                ("password", &c.user.1),
            ])
            .send()
            .await
            .unwrap();
        // Direct, the client is 127.0.0.1: another address, not blocked.
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(guess("203.0.113.7").await, StatusCode::TOO_MANY_REQUESTS);
    // Another client is not affected.
    assert_eq!(guess("203.0.113.8").await, StatusCode::BAD_REQUEST);
}

/// Runs the futures at once; their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
