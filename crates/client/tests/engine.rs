//! The engine against the real `latchkey-server` process on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use latchkey_client::SessionState;
use latchkey_protocol::ExposeSecret;
use latchkey_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_restart_then_100_edits_reach_the_server_exactly_once() {
    let mut server = TestServer::start(&[]);
    server.add_user("alice", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "alice").await;
    assert_eq!(e.status().state, SessionState::Online);
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    drop(e);

    // A fresh engine on the same data dir, no server: still signed in.
    let e = engine(dir.path(), &vault, &http).await;
    let st = e.status();
    assert_eq!(st.state, SessionState::Offline, "{st:?}");
    assert_eq!(st.user.as_ref().unwrap().username, "alice");
    save_notes(&e, 100).await;
    assert_eq!(e.status().pending, 100);

    server.restart();
    wait_for(&e, 20, "online with nothing pending", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    let notes = server_notes(&server.url(), "alice", PW).await;
    assert_eq!(notes.len(), 100);
    let mut titles: Vec<_> = notes.iter().map(|n| n.0.clone()).collect();
    titles.sort();
    titles.dedup();
    assert_eq!(titles.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_answer_lost_to_a_killed_server_duplicates_nothing() {
    let mut server = TestServer::start(&[]);
    server.add_user("bob", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "bob").await;
    e.set_work_offline(true);
    for i in 0..1200 {
        e.save_note(None, None, format!("n{i}"), "x".repeat(2000))
            .await
            .unwrap();
    }
    // The server applies the first push, then dies before answering.
    http.lose_push_responses.store(1, Ordering::SeqCst);
    e.set_work_offline(false);
    let pushed = http.clone();
    tokio::time::timeout(Duration::from_secs(20), async {
        while pushed.count("v1/sync/push") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a push was sent");
    server.kill();
    wait_state(&e, SessionState::Offline, 10).await;
    assert!(e.status().pending > 0);
    server.restart();
    wait_for(&e, 30, "all synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    let notes = server_notes(&server.url(), "bob", PW).await;
    assert_eq!(notes.len(), 1200, "nothing lost, nothing duplicated");
    assert!(notes.iter().all(|n| !n.0.contains("conflict copy")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_never_locks_offline_but_the_grace_does() {
    let mut server = TestServer::start(&["--access-ttl", "2s"]);
    server.add_user("carol", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let clock = TestClock::system();
    let e = engine_with(dir.path(), &vault, &http, Arc::new(clock.clone())).await;
    e.sign_in(&server.url(), "carol", PW).await.unwrap();
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    // well past the access token's expiry
    clock.advance(3600);
    let st = wait_for(&e, 5, "offline after expiry", |s| {
        s.access_expires_at.is_some_and(|x| x < clock_now(&clock))
    })
    .await;
    assert_eq!(st.state, SessionState::Offline);
    e.save_note(None, None, "still".into(), "works".into())
        .await
        .unwrap();
    // a fresh engine (a restart) restores it too
    drop(e);
    let e = engine_with(dir.path(), &vault, &http, Arc::new(clock.clone())).await;
    assert_eq!(e.status().state, SessionState::Offline);
    assert_eq!(e.list_notes().await.unwrap().len(), 1);
    // eight days offline: the 7-day grace is over
    clock.advance(8 * 86_400);
    let st = wait_state(&e, SessionState::Locked, 5).await;
    assert!(st.locked_reason.unwrap().contains("offline longer"));
    assert_eq!(e.list_notes().await.unwrap_err().code(), "locked");
    // the server confirms again: unlocked
    server.restart();
    wait_state(&e, SessionState::Online, 20).await;
}

fn clock_now(c: &TestClock) -> i64 {
    use latchkey_client::Clock as _;
    c.now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_refresh_token_locks_offline() {
    let mut server = TestServer::start(&["--refresh-ttl", "1h"]);
    server.add_user("dave", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let clock = TestClock::system();
    let e = engine_with(dir.path(), &vault, &http, Arc::new(clock.clone())).await;
    e.sign_in(&server.url(), "dave", PW).await.unwrap();
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    clock.advance(2 * 3600);
    let st = wait_state(&e, SessionState::Locked, 5).await;
    assert!(
        st.locked_reason.as_deref().unwrap().contains("run out"),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_set_back_locks_until_the_server_confirms() {
    let mut server = TestServer::start(&[]);
    server.add_user("erin", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let clock = TestClock::system();
    let e = engine_with(dir.path(), &vault, &http, Arc::new(clock.clone())).await;
    e.sign_in(&server.url(), "erin", PW).await.unwrap();
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    clock.advance(-600);
    let st = wait_state(&e, SessionState::Locked, 5).await;
    assert!(st.locked_reason.unwrap().contains("clock"));
    // putting it right again is not enough, and the lock survives a restart
    clock.advance(600);
    drop(e);
    let e = engine_with(dir.path(), &vault, &http, Arc::new(clock.clone())).await;
    assert_eq!(e.status().state, SessionState::Locked);
    server.restart();
    wait_state(&e, SessionState::Online, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_while_offline_keeps_the_outbox_and_pushes_after_signing_in_again() {
    let mut server = TestServer::start(&[]);
    server.add_user("frank", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "frank").await;
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    for i in 0..3 {
        e.save_note(None, None, format!("offline {i}"), "kept".into())
            .await
            .unwrap();
    }
    server.revoke_user("frank");
    server.restart();
    let st = wait_state(&e, SessionState::Revoked, 20).await;
    assert_eq!(st.user.unwrap().username, "frank");
    // the notes stay readable and writable for the same user meanwhile
    assert_eq!(e.list_notes().await.unwrap().len(), 3);
    assert!(
        vault.accounts().is_empty(),
        "the dead session's tokens are gone"
    );
    e.sign_in(&server.url(), "frank", PW).await.unwrap();
    wait_for(&e, 20, "synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    assert_eq!(server_notes(&server.url(), "frank", PW).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_edited_50_times_offline_is_one_change_without_conflict() {
    let mut server = TestServer::start(&[]);
    server.add_user("gina", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "gina").await;
    let note = e
        .save_note(None, None, "draft".into(), "v0".into())
        .await
        .unwrap();
    wait_for(&e, 10, "first version synced", |s| s.pending == 0).await;
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    for i in 1..=50 {
        e.save_note(Some(note.id), None, "draft".into(), format!("v{i}"))
            .await
            .unwrap();
    }
    assert_eq!(e.status().pending, 1);
    let pushes_before = http.count("v1/sync/push");
    server.restart();
    wait_for(&e, 20, "synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    // A push may be retried if the network blips under load; what counts is
    // that the server holds exactly the last text, with no conflict copy.
    assert!(http.count("v1/sync/push") > pushes_before);
    let notes = server_notes(&server.url(), "gina", PW).await;
    assert_eq!(notes, vec![("draft".to_string(), "v50".to_string(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_with_an_expired_token_share_one_refresh() {
    let server = TestServer::start(&["--access-ttl", "2s"]);
    server.add_user("hank", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "hank").await;
    e.set_work_offline(true); // keep the background loop quiet
    let exp = e.status().access_expires_at.unwrap();
    while latchkey_client::Clock::now(&latchkey_client::SystemClock) <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    e.set_work_offline(false);
    let before = http.count("refresh");
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move { e.confirm_session().await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().expect("every call succeeds");
    }
    assert_eq!(http.count("refresh") - before, 1, "exactly one refresh");
}

/// The server's signing key rotated while the app ran: the refreshed token
/// names a key the app has not cached, so it fetches the JWKS once, keeps
/// the session, and a restart with no network verifies with the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_fetched_once_and_kept_for_offline() {
    let mut server = TestServer::start(&["--access-ttl", "2s"]);
    server.add_user("kim", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "kim").await;
    e.set_work_offline(true); // keep the background loop quiet
    let kid_in_vault = || {
        let entry: latchkey_client::VaultEntry =
            serde_json::from_str(&vault.raw(&vault.accounts()[0]).unwrap()).unwrap();
        latchkey_protocol::KeySet::token_kid(entry.access_token.expose_secret()).unwrap()
    };
    let old_kid = kid_in_vault();
    let out = server.cli(&["keys", "rotate"], None);
    assert!(out.status.success(), "keys rotate failed");
    // The running server signs with the new key within ~1 s; each refresh
    // (after the 2 s token expired) shows which key signed it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while kid_in_vault() == old_kid {
        assert!(std::time::Instant::now() < deadline, "still the old key");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        e.set_work_offline(false);
        let jwks_before = http.count(".well-known/jwks.json");
        e.confirm_session().await.expect("the session survives");
        e.set_work_offline(true);
        let fetched = http.count(".well-known/jwks.json") - jwks_before;
        let rotated = kid_in_vault() != old_kid;
        assert_eq!(
            fetched,
            usize::from(rotated),
            "the JWKS fetched once, only for a new key"
        );
    }
    assert_ne!(e.status().state, SessionState::SignedOut);
    drop(e);

    server.stop();
    let e = engine(dir.path(), &vault, &http).await;
    assert_eq!(e.status().state, SessionState::Offline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refresh_response_does_not_end_the_session() {
    let server = TestServer::start(&["--access-ttl", "2s"]);
    server.add_user("ivy", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "ivy").await;
    e.set_work_offline(true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    http.lose_refresh_responses.store(1, Ordering::SeqCst);
    e.set_work_offline(false);
    let err = e.confirm_session().await.unwrap_err();
    assert_eq!(err.code(), "network");
    // the next attempt presents the same (spent) token: the server's retry window
    e.confirm_session().await.expect("the session survived");
    assert!(http.count("refresh") >= 2);
    wait_state(&e, SessionState::Online, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_foreign_token_in_the_keychain_signs_out() {
    let server = TestServer::start(&[]);
    server.add_user("jack", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "jack").await;
    drop(e);
    let account = vault.accounts().pop().unwrap();
    let original = vault.raw(&account).unwrap();
    let mut entry: latchkey_client::VaultEntry = serde_json::from_str(&original).unwrap();

    // tampered payload, original signature
    let mut claims = jwt_part(entry.access_token.expose_secret(), 1);
    claims["name"] = "mallory".into();
    entry.access_token = tamper(entry.access_token.expose_secret(), &claims).into();
    vault.put_raw(&account, &serde_json::to_string(&entry).unwrap());
    let e = engine(dir.path(), &vault, &http).await;
    let st = e.status();
    assert_eq!(st.state, SessionState::SignedOut);
    assert_eq!(st.last_error.unwrap().code, "token_invalid");
    drop(e);

    // signed by a foreign key under the server's kid
    let mut entry: latchkey_client::VaultEntry = serde_json::from_str(&original).unwrap();
    let kid = latchkey_protocol::KeySet::token_kid(entry.access_token.expose_secret()).unwrap();
    let claims: latchkey_protocol::Claims =
        serde_json::from_value(jwt_part(entry.access_token.expose_secret(), 1)).unwrap();
    let foreign = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    entry.access_token = latchkey_protocol::token::sign(&foreign, &kid, &claims).into();
    vault.put_raw(&account, &serde_json::to_string(&entry).unwrap());
    let e = engine(dir.path(), &vault, &http).await;
    assert_eq!(e.status().state, SessionState::SignedOut);
    assert!(
        e.status()
            .last_error
            .unwrap()
            .message
            .contains("could not be verified")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keychain_is_a_clear_error_and_no_password_is_sent() {
    let server = TestServer::start(&[]);
    server.add_user("kim", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    vault.set_unavailable(true);
    let e = engine(dir.path(), &vault, &http).await;
    let err = e.sign_in(&server.url(), "kim", PW).await.unwrap_err();
    assert_eq!(err.code(), "keychain_unavailable");
    assert!(err.to_string().contains("keychain"));
    assert_eq!(http.count("v1/auth/token"), 0);
    assert_eq!(e.status().state, SessionState::SignedOut);
    assert_eq!(e.status().last_error.unwrap().code, "keychain_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_one_data_dir_never_see_each_other() {
    let server = TestServer::start(&[]);
    server.add_user("lena", PW);
    server.add_user("mike", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "lena").await;
    e.set_work_offline(true);
    e.save_note(None, None, "lena's secret".into(), "only hers".into())
        .await
        .unwrap();
    e.sign_out(false).await.unwrap();
    e.set_work_offline(false);
    e.sign_in(&server.url(), "mike", PW).await.unwrap();
    assert!(e.list_notes().await.unwrap().is_empty());
    wait_for(&e, 10, "mike synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    assert!(e.list_notes().await.unwrap().is_empty());
    e.save_note(None, None, "mike's".into(), "his".into())
        .await
        .unwrap();
    wait_for(&e, 10, "mike's note synced", |s| s.pending == 0).await;
    e.sign_out(false).await.unwrap();
    e.sign_in(&server.url(), "lena", PW).await.unwrap();
    let notes = e.list_notes().await.unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].title, "lena's secret");
    wait_for(&e, 10, "lena synced", |s| s.pending == 0).await;
    assert_eq!(server_notes(&server.url(), "lena", PW).await.len(), 1);
    assert_eq!(server_notes(&server.url(), "mike", PW).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_server_means_offline_within_seconds() {
    let server = TestServer::start(&[]);
    server.add_user("nora", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "nora").await;
    wait_state(&e, SessionState::Online, 5).await;
    // Every instance, when several are behind nginx: nginx still takes
    // the connection, nothing answers.
    let pids = server.pids();
    pids.iter().for_each(|&pid| signal_pid(pid, libc::SIGSTOP));
    let started = std::time::Instant::now();
    wait_state(&e, SessionState::Offline, 10).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    pids.iter().for_each(|&pid| signal_pid(pid, libc::SIGCONT));
    wait_state(&e, SessionState::Online, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_offline_stops_all_traffic() {
    let server = TestServer::start(&[]);
    server.add_user("olga", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "olga").await;
    e.set_work_offline(true);
    let st = wait_state(&e, SessionState::Offline, 5).await;
    assert!(st.work_offline);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = http.calls.lock().unwrap().len();
    e.save_note(None, None, "quiet".into(), "no network".into())
        .await
        .unwrap();
    assert_eq!(e.sync_now().await.unwrap_err().code(), "working_offline");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        http.calls.lock().unwrap().len(),
        before,
        "no request while working offline"
    );
    e.set_work_offline(false);
    wait_for(&e, 10, "synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = engine(dir.path(), &vault, &http).await;
    let err = e
        .sign_in("http://notes.example.com", "a", "b")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "insecure_url");
    assert!(http.calls.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_offline_revokes_once_the_server_is_back() {
    let mut server = TestServer::start(&[]);
    server.add_user("pia", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "pia").await;
    let entry: latchkey_client::VaultEntry =
        serde_json::from_str(&vault.raw(&vault.accounts()[0]).unwrap()).unwrap();
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    e.sign_out(false).await.unwrap();
    assert_eq!(e.status().state, SessionState::SignedOut);
    // the refresh token waits in the keychain, marked
    let kept: latchkey_client::VaultEntry =
        serde_json::from_str(&vault.raw(&vault.accounts()[0]).unwrap()).unwrap();
    assert!(kept.revoke_pending);
    server.restart();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !vault.accounts().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the pending revocation was made");
    let res = web()
        .post(format!("{}/v1/auth/token", server.url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", entry.refresh_token.expose_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "the old refresh token is dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_name_is_the_host_name_until_the_user_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = engine(dir.path(), &vault, &http).await;
    let host = e.device_name();
    assert!(
        !host.trim().is_empty() && host.chars().count() <= 64,
        "{host:?}"
    );

    let too_long = "x".repeat(65);
    let err = e.set_device_name(Some(&too_long)).await.unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    assert_eq!(e.device_name(), host, "a refused name changes nothing");
    e.set_device_name(Some("  Work laptop ")).await.unwrap();
    assert_eq!(e.device_name(), "Work laptop");
    drop(e);

    // Kept across restarts, and the name the server lists for the session.
    let e = engine(dir.path(), &vault, &http).await;
    assert_eq!(e.device_name(), "Work laptop");
    let server = TestServer::start(&[]);
    server.add_user("dev", PW);
    e.sign_in(&server.url(), "dev", PW).await.unwrap();
    let web = web();
    let token = access_token(&web, &server.url(), "dev", PW).await;
    let listed: latchkey_protocol::SessionsResponse = web
        .get(format!("{}/v1/auth/sessions", server.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<Option<&str>> = listed
        .sessions
        .iter()
        .filter(|s| !s.current)
        .map(|s| s.device_name.as_deref())
        .collect();
    assert_eq!(names, [Some("Work laptop")]);

    // Blank goes back to the host name.
    e.set_device_name(Some(" ")).await.unwrap();
    assert_eq!(e.device_name(), host);
}
