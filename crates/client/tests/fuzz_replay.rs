//! Replays the client's fuzz corpora (`fuzz/corpus/<target>/`) and the
//! inputs of fixed crashes (`fuzz/regressions/<target>/`) through the entry
//! points the fuzz targets call, as plain tests: no fuzzer build needed.
//! The long fuzzing run is `bash scripts/reliability.sh fuzz`.
//!
//! `capture_seed_corpora` (ignored; run by hand) rewrites the `real-*` seed
//! files of all six targets from real traffic: two engines against the real
//! server, through a transport that records every request and answer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use latchkey_client::http::{HttpRequest, HttpResponse};
use latchkey_client::{Http, ReqwestHttp, SystemClock, VaultEntry};
use latchkey_protocol::fuzzing::{self as fx, replay};
use latchkey_protocol::{ExposeSecret, SecretString};
use latchkey_testkit::*;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn stored_and_fresh_tokens_replay() {
    replay(
        &fuzz_dir(),
        "client_token",
        latchkey_client::fuzzing::client_token,
    );
}

#[test]
fn push_and_pull_answers_replay() {
    replay(
        &fuzz_dir(),
        "client_sync_json",
        latchkey_client::fuzzing::client_sync_json,
    );
}

#[test]
fn live_update_streams_replay() {
    replay(
        &fuzz_dir(),
        "client_events",
        latchkey_client::fuzzing::client_events,
    );
}

#[test]
fn keychain_entries_replay() {
    replay(
        &fuzz_dir(),
        "vault_entry",
        latchkey_client::fuzzing::vault_entry,
    );
}

/// Found with the `vault_entry` target: a keychain entry whose times sit at
/// the ends of the range (a damaged entry; its token still verifies) made
/// the offline policy's arithmetic overflow: a panic in a debug build, a
/// time wrapped round in a release one. Restoring it now gives a locked
/// session, and the engine keeps answering while the clock runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keychain_entry_with_extreme_times_locks_instead_of_crashing() {
    const PW: &str = "extreme-times-pw";
    let server = TestServer::start(&[]);
    server.add_user("alice", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = engine(dir.path(), &vault, &http).await;
    e.sign_in(&server.url(), "alice", PW).await.unwrap();
    drop(e);
    http.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let account = vault.accounts().pop().unwrap();
    let signed_in = VaultEntry::from_json(&vault.raw(&account).unwrap()).unwrap();
    for time in [i64::MIN, i64::MAX] {
        let mut entry = signed_in.clone();
        (entry.latest_seen_time, entry.last_confirmed_at) = (time, time);
        vault.put_raw(&account, entry.to_json().expose_secret());
        let e = engine(dir.path(), &vault, &http).await;
        wait_state(&e, latchkey_client::SessionState::Locked, 10).await;
        // Past a second, the monotonic floor (latest time seen + elapsed) is in play.
        let since = std::time::Instant::now();
        while since.elapsed() < std::time::Duration::from_millis(1500) {
            assert_eq!(e.list_notes().await.unwrap_err().code(), "locked");
        }
    }
}

/// A transport that keeps every request and its answer.
#[derive(Clone)]
struct Recorder {
    inner: ReqwestHttp,
    log: Arc<Mutex<Vec<(HttpRequest, HttpResponse)>>>,
}

#[async_trait]
impl Http for Recorder {
    async fn send(&self, req: HttpRequest) -> latchkey_client::Result<HttpResponse> {
        let res = self.inner.send(req.clone()).await?;
        self.log.lock().unwrap().push((req, res.clone()));
        Ok(res)
    }
}

/// The seed files of one target, written once each.
struct Seeds {
    dir: PathBuf,
    n: usize,
}

impl Seeds {
    fn new(target: &str) -> Self {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for old in std::fs::read_dir(&dir).unwrap() {
            let path = old.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("real-")
            {
                std::fs::remove_file(path).unwrap();
            }
        }
        Seeds { dir, n: 0 }
    }

    fn add(&mut self, what: &str, data: &[u8]) {
        assert!(data.len() <= 4096, "a {}-byte seed for {what}", data.len());
        self.n += 1;
        std::fs::write(self.dir.join(format!("real-{:02}-{what}", self.n)), data).unwrap();
    }
}

/// A stored entry made fit for the corpus: the throwaway key's JWKS and a
/// re-signed token, the fixture's issuer, user and session, its times moved
/// to the fixture's clock.
fn corpus_entry(raw: &str) -> String {
    let mut entry = VaultEntry::from_json(raw).expect("the engine stored a valid entry");
    let (token, ..) = fx::resign(entry.access_token.expose_secret()).expect("a real token");
    entry.access_token = token.into();
    entry.issuer = fx::ISSUER.into();
    entry.user.id = fx::USER_ID.into();
    entry.session_id = fx::SESSION_ID.into();
    entry.jwks = fx::jwks();
    let shift = fx::NOW - entry.latest_seen_time;
    entry.latest_seen_time += shift;
    entry.last_confirmed_at += shift;
    entry.refresh_expires_at += shift;
    assert!(entry.verify().is_ok());
    entry.to_json().expose_secret().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "rewrites the seed corpora in fuzz/corpus: run by hand"]
async fn capture_seed_corpora() {
    const PW: &str = "fuzz-seed-password";
    let server = TestServer::start(&[]);
    server.add_user("alice", PW);
    let log = Arc::new(Mutex::new(Vec::new()));
    let http = Recorder {
        inner: ReqwestHttp::new(std::time::Duration::from_secs(2)).unwrap(),
        log: log.clone(),
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (vault_a, vault_b) = (MemoryVault::new(), MemoryVault::new());
    let start = |dir: &Path, vault: &MemoryVault| {
        latchkey_client::Engine::start(
            test_config(dir),
            Arc::new(vault.clone()),
            Arc::new(http.clone()),
            Arc::new(SystemClock),
        )
    };
    let a = start(dir_a.path(), &vault_a).await.unwrap();
    let b = start(dir_b.path(), &vault_b).await.unwrap();
    a.sign_in(&server.url(), "alice", PW).await.unwrap();
    b.sign_in(&server.url(), "alice", PW).await.unwrap();
    let mut entries = Seeds::new("vault_entry");
    for vault in [&vault_a, &vault_b] {
        let raw = vault.raw(&vault.accounts()[0]).unwrap();
        entries.add("signed-in", corpus_entry(&raw).as_bytes());
    }

    // Edits, a conflict, a delete, an empty note, and text beyond ASCII.
    let n1 = a
        .save_note(None, None, "groceries".into(), "milk\neggs".into())
        .await
        .unwrap();
    a.save_note(None, None, String::new(), String::new())
        .await
        .unwrap();
    a.sync_now().await.unwrap();
    b.sync_now().await.unwrap();
    a.save_note(
        Some(n1.id),
        None,
        "groceries".into(),
        "milk\neggs\nbread".into(),
    )
    .await
    .unwrap();
    b.save_note(
        Some(n1.id),
        None,
        "Einkäufe 🛒".into(),
        "Milch \"frisch\"\t\\".into(),
    )
    .await
    .unwrap();
    a.sync_now().await.unwrap();
    b.sync_now().await.unwrap();
    a.sync_now().await.unwrap();
    b.delete_note(n1.id).await.unwrap();
    b.sync_now().await.unwrap();
    a.sync_now().await.unwrap();

    // The same push again (an answer lost in the network), then a refresh,
    // a reused refresh token, and a sign-out.
    let entry = VaultEntry::from_json(&vault_a.raw(&vault_a.accounts()[0]).unwrap()).unwrap();
    let t = test_config(dir_a.path()).timeouts;
    let first_push = log
        .lock()
        .unwrap()
        .iter()
        .find(|(req, _)| path_of(&req.url) == "v1/sync/push")
        .map(|(req, _)| req.clone())
        .unwrap();
    http.send(first_push.bearer(entry.access_token.clone()))
        .await
        .unwrap();
    let refresh = |token: SecretString| {
        let (http, url) = (http.clone(), server.url());
        async move { latchkey_client::api::refresh_grant(&http, &url, &token, t).await }
    };
    let next = refresh(entry.refresh_token.clone()).await.unwrap();
    refresh(next.value.refresh_token).await.unwrap();
    let reused = refresh(entry.refresh_token.clone()).await;
    assert!(reused.is_err(), "a reused refresh token was accepted");
    entries.add(
        "after-sync",
        corpus_entry(&vault_b.raw(&vault_b.accounts()[0]).unwrap()).as_bytes(),
    );
    b.sign_out(false).await.unwrap();

    let (mut forms, mut pushes, mut answers) = (
        Seeds::new("token_form"),
        Seeds::new("server_push_json"),
        Seeds::new("client_sync_json"),
    );
    let (mut bearers, mut tokens) = (Seeds::new("server_token"), Seeds::new("client_token"));
    for (req, res) in log.lock().unwrap().iter() {
        let path = path_of(&req.url);
        match path {
            "v1/auth/token" | "v1/auth/revoke" => {
                forms.add(path.rsplit('/').next().unwrap(), &req.body);
                if res.status == 200 && path == "v1/auth/token" {
                    let body: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
                    let real = body["access_token"].as_str().unwrap();
                    let (token, header, claims) = fx::resign(real).unwrap();
                    bearers.add("bearer", format!("Bearer {token}").as_bytes());
                    tokens.add("token", token.as_bytes());
                    let signed = format!("#sign\n{header}\n{claims}");
                    bearers.add("sign", signed.as_bytes());
                    tokens.add("sign", signed.as_bytes());
                } else {
                    answers.add(&format!("auth-answer-{}", res.status), &res.body);
                }
            }
            "v1/sync/push" => {
                pushes.add("push", &req.body);
                answers.add(&format!("push-answer-{}", res.status), &res.body);
            }
            "v1/sync/pull" => answers.add(&format!("pull-answer-{}", res.status), &res.body),
            _ => {}
        }
    }
    for seeds in [&forms, &pushes, &answers, &bearers, &tokens, &entries] {
        assert!(seeds.n >= 2, "few seeds in {}", seeds.dir.display());
    }
}
