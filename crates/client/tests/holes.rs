//! Regression tests of issue 10's holes in "nothing lost, nobody wrongly
//! signed out", each against the real `latchkey-server` process on
//! 127.0.0.1 (RELIABILITY.md lists them with their fixes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use latchkey_client::{Engine, SessionState, Status};
use latchkey_protocol::ExposeSecret;
use latchkey_testkit::*;

/// Waits until a sync has nothing left to send and has worked.
async fn synced(e: &Engine) -> Status {
    e.sync_now().await.expect("sync");
    wait_for(e, 30, "synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await
}

fn bodies(notes: &[(String, String, bool)]) -> Vec<String> {
    let mut b: Vec<String> = notes.iter().map(|n| n.1.clone()).collect();
    b.sort();
    b
}

/// The local database of the signed-in user of `e`.
fn local_db(dir: &Path, e: &Engine) -> PathBuf {
    let st = e.status();
    latchkey_client::engine::user_dir(dir, st.server.as_ref().unwrap(), &st.user.unwrap().id)
        .join("notes.db")
}

/// Item 1: a note open in the editor is changed by another device and
/// pulled here; the editor's next save, made on the version it loaded,
/// keeps both texts. The same right after a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_on_a_note_changed_elsewhere_keeps_both_texts() {
    let server = TestServer::start(&[]);
    server.add_user("ann", PW);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let a = signed_in(&server, da.path(), &vault, &http, "ann").await;
    let b = signed_in(&server, db.path(), &MemoryVault::new(), &http, "ann").await;
    let note = a
        .save_note(None, None, "plan".into(), "A's first text".into())
        .await
        .unwrap();
    synced(&a).await;
    synced(&b).await;
    // A has the note open (at `opened`); B edits it, A pulls the edit.
    let opened = a.get_note(note.id).await.unwrap();
    b.save_note(Some(note.id), None, "plan".into(), "B's text".into())
        .await
        .unwrap();
    synced(&b).await;
    synced(&a).await;
    let pulled = a.get_note(note.id).await.unwrap();
    assert_eq!(pulled.body, "B's text");
    assert_ne!(pulled.version, opened.version, "a pull moves the version");
    // A's editor saves on the version it loaded: B's text stays, A's text
    // goes into a conflict copy.
    let saved = a
        .save_note(
            Some(note.id),
            Some(opened.version),
            "plan".into(),
            "A's first text, and a keystroke".into(),
        )
        .await
        .unwrap();
    assert_ne!(saved.id, note.id, "a conflict copy, not the note");
    assert_eq!(saved.conflict_of, Some(note.id));
    assert_eq!(saved.title, "plan (conflict copy)");
    assert_eq!(a.get_note(note.id).await.unwrap().body, "B's text");
    // A save on the current version is an ordinary save; an acknowledged
    // push does not move the version (no false conflicts).
    let current = a.get_note(note.id).await.unwrap();
    let same = a
        .save_note(
            Some(note.id),
            Some(current.version),
            "plan".into(),
            "B's text, read by A".into(),
        )
        .await
        .unwrap();
    assert_eq!(same.id, note.id);
    synced(&a).await;
    let after_push = a.get_note(note.id).await.unwrap();
    assert_eq!(after_push.version, same.version);
    let again = a
        .save_note(
            Some(note.id),
            Some(same.version),
            "plan".into(),
            "B's text, read by A, twice".into(),
        )
        .await
        .unwrap();
    assert_eq!(again.id, note.id, "no false conflict after a push");
    synced(&a).await;

    // Right after a conflict: A edits offline, B edits and syncs first; A's
    // sync conflicts and the note takes B's version; A goes on typing on
    // the version it had.
    a.set_work_offline(true);
    let typing = a
        .save_note(
            Some(note.id),
            Some(again.version),
            "plan".into(),
            "A offline".into(),
        )
        .await
        .unwrap();
    synced(&b).await;
    b.save_note(Some(note.id), None, "plan".into(), "B again".into())
        .await
        .unwrap();
    synced(&b).await;
    a.set_work_offline(false);
    synced(&a).await;
    assert_eq!(a.get_note(note.id).await.unwrap().body, "B again");
    let on = a
        .save_note(
            Some(note.id),
            Some(typing.version),
            "plan".into(),
            "A offline, still typing".into(),
        )
        .await
        .unwrap();
    assert_ne!(on.id, note.id);
    synced(&a).await;
    // The copies made here are marked as such for every device.
    let changes = server_changes(&server.url(), "ann", PW).await;
    let copy = changes.iter().find(|c| c.note_id == on.id).unwrap();
    assert_eq!(copy.conflict_of, Some(note.id));
    synced(&b).await;
    assert_eq!(b.get_note(on.id).await.unwrap().conflict_of, Some(note.id));
    let all = bodies(&server_notes(&server.url(), "ann", PW).await);
    for text in [
        "B again",
        "A's first text, and a keystroke",
        "A offline",
        "A offline, still typing",
    ] {
        assert!(all.iter().any(|b| b == text), "{text:?} lost: {all:?}");
    }
}

/// Item 3: three 3 MiB notes made offline make a push of over 8 MiB when
/// batched by count: batched by bytes they sync within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_big_notes_made_offline_sync_when_back_online() {
    let server = TestServer::start(&[]);
    server.add_user("bea", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "bea").await;
    e.set_work_offline(true);
    for i in 0..3 {
        let body = format!("{i}").repeat(3 << 20);
        e.save_note(None, None, format!("big {i}"), body)
            .await
            .unwrap();
    }
    e.set_work_offline(false);
    wait_for(&e, 30, "the big notes synced", |s| {
        s.state == SessionState::Online
            && s.pending == 0
            && s.last_sync_result.as_deref() == Some("ok")
    })
    .await;
    let notes = server_notes(&server.url(), "bea", PW).await;
    assert_eq!(notes.len(), 3);
    assert!(notes.iter().all(|n| n.1.len() == 3 << 20));
}

/// Item 3: conflicts on several large notes at once: the push answer stays
/// bounded and the client learns the server's versions by pulling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_several_big_notes_at_once_lose_nothing() {
    let server = TestServer::start(&[]);
    server.add_user("cid", PW);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let http = TestHttp::new();
    let a = signed_in(&server, da.path(), &MemoryVault::new(), &http, "cid").await;
    let b = signed_in(&server, db.path(), &MemoryVault::new(), &http, "cid").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let n = a
            .save_note(None, None, format!("big {i}"), "first".into())
            .await
            .unwrap();
        ids.push(n.id);
    }
    synced(&a).await;
    synced(&b).await;
    a.set_work_offline(true);
    for (i, id) in ids.iter().enumerate() {
        a.save_note(Some(*id), None, format!("big {i}"), "a".repeat(3 << 20))
            .await
            .unwrap();
        b.save_note(Some(*id), None, format!("big {i}"), "b".repeat(3 << 20))
            .await
            .unwrap();
    }
    synced(&b).await;
    a.set_work_offline(false);
    wait_for(&a, 60, "the conflicts settled", |s| {
        s.state == SessionState::Online
            && s.pending == 0
            && s.last_sync_result.as_deref() == Some("ok")
    })
    .await;
    synced(&a).await;
    // A's notes hold B's text (the server's); A's texts are conflict copies.
    for id in &ids {
        let n = a.get_note(*id).await.unwrap();
        assert!(n.body.starts_with('b') && n.body.len() == 3 << 20, "{id}");
    }
    let notes = server_notes(&server.url(), "cid", PW).await;
    assert_eq!(notes.len(), 6);
    assert_eq!(notes.iter().filter(|n| n.1.starts_with('a')).count(), 3);
    assert_eq!(a.list_notes().await.unwrap().len(), 6);
}

/// Item 3: a proxy with a lower limit than the server's answers 413: the
/// batch is split; a note too large even alone stays queued, said so, while
/// the others and the pull go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_and_never_blocks_the_pull() {
    let server = TestServer::start(&[]);
    server.add_user("dee", PW);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (http, other) = (TestHttp::new(), TestHttp::new());
    let a = signed_in(&server, da.path(), &MemoryVault::new(), &http, "dee").await;
    let b = signed_in(&server, db.path(), &MemoryVault::new(), &other, "dee").await;
    http.push_limit.store(1 << 20, Ordering::SeqCst);
    a.set_work_offline(true);
    for i in 0..10 {
        a.save_note(None, None, format!("mid {i}"), "m".repeat(300 << 10))
            .await
            .unwrap();
    }
    a.save_note(None, None, "huge".into(), "h".repeat(2 << 20))
        .await
        .unwrap();
    b.save_note(None, None, "from b".into(), "hello".into())
        .await
        .unwrap();
    synced(&b).await;
    a.set_work_offline(false);
    let err = a.sync_now().await.unwrap_err();
    assert_eq!(err.code(), "too_large", "{err}");
    let st = a.status();
    assert_eq!(st.pending, 1, "only the huge note waits: {st:?}");
    let notes = server_notes(&server.url(), "dee", PW).await;
    assert_eq!(notes.len(), 11, "ten mid notes and B's");
    assert!(
        a.list_notes()
            .await
            .unwrap()
            .iter()
            .any(|n| n.title == "from b"),
        "the pull ran"
    );
    // Past the proxy, it goes too.
    http.push_limit.store(0, Ordering::SeqCst);
    synced(&a).await;
    assert_eq!(server_notes(&server.url(), "dee", PW).await.len(), 12);
}

/// Item 4: the bookkeeping that marks an op sent is not flushed to disk; a
/// power cut after the server applied the push leaves it unsent. An edit
/// then must not reuse its op id (the server would answer "duplicate" and
/// drop the new text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_after_a_lost_sent_mark_reaches_the_server() {
    let server = TestServer::start(&[]);
    server.add_user("eve", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "eve").await;
    e.set_work_offline(true);
    let note = e
        .save_note(None, None, "memo".into(), "first text".into())
        .await
        .unwrap();
    // The server applies the outbox op as the engine would push it, and
    // the engine's record of having sent it is lost: it is still unsent.
    let db = local_db(dir.path(), &e);
    let op: latchkey_protocol::Op = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT op_id, note_id, base_rev, title, body, client_time FROM outbox WHERE sent = 0",
            [],
            |r| {
                Ok(latchkey_protocol::Op::Upsert {
                    op_id: r.get::<_, String>(0)?.parse().unwrap(),
                    note_id: r.get::<_, String>(1)?.parse().unwrap(),
                    base_rev: r.get(2)?,
                    title: r.get(3)?,
                    body: r.get(4)?,
                    client_time: r.get(5)?,
                    conflict_of: None,
                })
            },
        )
        .unwrap()
    };
    let web = web();
    let token = access_token(&web, &server.url(), "eve", PW).await;
    let res = web
        .post(format!("{}/v1/sync/push", server.url()))
        .bearer_auth(&token)
        .json(&latchkey_protocol::PushRequest { ops: vec![op] })
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Edited offline, then synced.
    e.save_note(Some(note.id), None, "memo".into(), "second text".into())
        .await
        .unwrap();
    e.set_work_offline(false);
    synced(&e).await;
    let texts = bodies(&server_notes(&server.url(), "eve", PW).await);
    assert!(
        texts.iter().any(|b| b == "second text"),
        "the edit never reached the server: {texts:?}"
    );
}

/// Item 5: the session ends while the user types: the last edit is saved,
/// locally, for that same user, and syncs after they sign in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_as_the_session_ends_syncs_after_signing_in_again() {
    let server = TestServer::start(&[]);
    server.add_user("fay", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "fay").await;
    let note = e
        .save_note(None, None, "diary".into(), "monday".into())
        .await
        .unwrap();
    synced(&e).await;
    revoke_user_now(&server, "fay", PW).await;
    // The live-updates stream may have ended the session already (the
    // server passes a revocation on within a second); if not, this sync
    // learns it.
    let code = e.sync_now().await.unwrap_err().code();
    assert!(
        matches!(code, "session_revoked" | "not_signed_in"),
        "{code}"
    );
    assert_eq!(e.status().state, SessionState::Revoked);
    // The editor's last keystrokes, saved after the end.
    let saved = e
        .save_note(
            Some(note.id),
            Some(note.version),
            "diary".into(),
            "monday, tuesday".into(),
        )
        .await
        .expect("a save after the session ended is kept");
    assert_eq!(saved.id, note.id);
    e.sign_in(&server.url(), "fay", PW).await.unwrap();
    synced(&e).await;
    let texts = bodies(&server_notes(&server.url(), "fay", PW).await);
    assert_eq!(texts, ["monday, tuesday"]);
}

/// Copies a stopped server's database (and its WAL, if any).
fn copy_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let (src, dst) = (
            PathBuf::from(format!("{}{suffix}", from.display())),
            PathBuf::from(format!("{}{suffix}", to.display())),
        );
        let _ = std::fs::remove_file(&dst);
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Item 6: a server restored from an older backup (taken online with
/// `latchkey-server backup`) gets back what the device has (PROTOCOL.md
/// v1.1: `cursor_ahead`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restored_from_a_backup_gets_everything_back() {
    if skip_in_cluster("restores the backup by copying a SQLite file over the server's") {
        return;
    }
    let mut server = TestServer::start(&[]);
    server.add_user("gus", PW);
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "gus").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let n = e
            .save_note(None, None, format!("n{i}"), format!("v1 {i}"))
            .await
            .unwrap();
        ids.push(n.id);
    }
    synced(&e).await;
    // `latchkey-server backup`, while the server runs and the device syncs.
    e.save_note(None, None, "during".into(), "the backup".into())
        .await
        .unwrap();
    let out = server.cli(&["backup", "--to", backup.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("(users 1, notes ") && said.contains("checks out"),
        "{said}"
    );
    // After the backup: an edit, a new note, a delete.
    e.save_note(Some(ids[0]), None, "n0".into(), "v2 0".into())
        .await
        .unwrap();
    e.save_note(None, None, "n4".into(), "v1 4".into())
        .await
        .unwrap();
    e.delete_note(ids[1]).await.unwrap();
    synced(&e).await;
    let mut before = server_notes(&server.url(), "gus", PW).await;
    before.sort();
    // The backup goes back in.
    server.stop();
    copy_db(&backup, &server.db());
    server.restart();
    wait_for(&e, 30, "online again", |s| s.state == SessionState::Online).await;
    synced(&e).await;
    synced(&e).await;
    let mut after = server_notes(&server.url(), "gus", PW).await;
    after.sort();
    assert_eq!(after, before, "the restored server has everything back");
    let mut local: Vec<_> = e
        .list_notes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.title, n.body, false))
        .collect();
    local.sort();
    assert_eq!(local, after);
    assert_eq!(e.status().pending, 0);
}

/// Item 8: a refresh whose new access token cannot be verified yet (its
/// key could not be fetched) keeps the new refresh token: more than 60 s
/// later the session still refreshes instead of counting as reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_key_fetch_fails_keeps_the_new_refresh_token() {
    let server = TestServer::start(&["--access-ttl", "10s"]);
    server.add_user("hal", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "hal").await;
    e.set_work_offline(true);
    let out = server.cli(&["keys", "rotate"], None);
    assert!(out.status.success());
    // The token is due for a refresh (under a fifth of its life left).
    let exp = e.status().access_expires_at.unwrap();
    while now() + 1 < exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The refresh happens; the new token's key cannot be fetched once.
    http.fail_once
        .lock()
        .unwrap()
        .push(".well-known/jwks.json".into());
    let refreshes = http.count("refresh");
    e.set_work_offline(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.count("refresh") == refreshes || !http.fail_once.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no refresh happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.set_work_offline(true);
    // Past the server's 60 s retry window for the spent token.
    tokio::time::sleep(Duration::from_secs(62)).await;
    e.set_work_offline(false);
    let st = wait_for(&e, 30, "online on the kept refresh token", |s| {
        s.state == SessionState::Online || s.state == SessionState::Revoked
    })
    .await;
    assert_eq!(st.state, SessionState::Online, "{st:?}");
    synced(&e).await;
}

/// Item 9: a spent refresh token replayed inside the retry window (a thief)
/// gets a pair, and the real client's token is then reuse: the session is
/// revoked, the client shows it as revoked, and the thief's pair is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_replayed_in_the_retry_window_revokes_the_session() {
    let server = TestServer::start(&["--access-ttl", "10s"]);
    server.add_user("ida", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "ida").await;
    e.set_work_offline(true);
    let stolen: latchkey_client::VaultEntry =
        serde_json::from_str(&vault.raw(&vault.accounts()[0]).unwrap()).unwrap();
    let web = web();
    let grant = |token: String| {
        let (web, url) = (web.clone(), server.url());
        async move {
            web.post(format!("{url}/v1/auth/token"))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                .send()
                .await
                .unwrap()
        }
    };
    // The thief uses the stolen token first.
    let thief: serde_json::Value = grant(stolen.refresh_token.expose_secret().to_owned())
        .await
        .json()
        .await
        .unwrap();
    let thief_refresh = thief["refresh_token"].as_str().unwrap().to_string();
    // The real client refreshes with the same (now spent) token, inside
    // the window: a retry; the thief's successor is retired.
    let exp = e.status().access_expires_at.unwrap();
    while now() + 1 < exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    e.set_work_offline(false);
    synced(&e).await;
    // The thief presents the retired successor: reuse, the session ends.
    let res = grant(thief_refresh).await;
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["reason"], "reused", "{body}");
    let st = wait_for(&e, 40, "revoked", |s| s.state == SessionState::Revoked).await;
    assert_eq!(st.user.unwrap().username, "ida");
}

/// Item 10: a clock that ran fast and was put right does not lock every
/// later offline period once the server has confirmed the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_ran_fast_is_forgiven_once_the_server_confirms() {
    let mut server = TestServer::start(&[]);
    server.add_user("jo", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let clock = TestClock::system();
    let e = engine_with(dir.path(), &vault, &http, Arc::new(clock.clone())).await;
    // A day fast while signing in and working.
    clock.advance(86_400);
    e.sign_in(&server.url(), "jo", PW).await.unwrap();
    synced(&e).await;
    // Put right while offline (online, the next confirmation would already
    // forgive it): that looks like a clock set back.
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    clock.advance(-86_400);
    wait_state(&e, SessionState::Locked, 10).await;
    // The server confirms the session at the right time...
    server.restart();
    wait_state(&e, SessionState::Online, 30).await;
    synced(&e).await;
    // ...and the next offline period is an ordinary one.
    server.stop();
    let st = wait_state(&e, SessionState::Offline, 10).await;
    assert!(st.offline_until.is_some(), "{st:?}");
    e.save_note(None, None, "works".into(), "offline".into())
        .await
        .unwrap();
    // And it stays so across a restart.
    drop(e);
    let e = engine_with(dir.path(), &vault, &http, Arc::new(clock.clone())).await;
    assert_eq!(e.status().state, SessionState::Offline, "{:?}", e.status());
}

/// Item 12: a sign-out made offline keeps its revocation until the server
/// confirms it, also across a new sign-in of the same user whose first
/// attempt to revoke fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_made_offline_is_revoked_even_after_signing_in_again() {
    let mut server = TestServer::start(&[]);
    server.add_user("kim", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "kim").await;
    let old: latchkey_client::VaultEntry =
        serde_json::from_str(&vault.raw(&vault.accounts()[0]).unwrap()).unwrap();
    server.stop();
    wait_state(&e, SessionState::Offline, 10).await;
    e.sign_out(false).await.unwrap();
    server.restart();
    // Every revocation fails for a while: the sign-in goes on without it.
    http.unreachable
        .lock()
        .unwrap()
        .push("v1/auth/revoke".into());
    e.sign_in(&server.url(), "kim", PW).await.unwrap();
    synced(&e).await;
    let web = web();
    let old_session_works = || async {
        web.get(format!("{}/v1/auth/session", server.url()))
            .bearer_auth(old.access_token.expose_secret())
            .send()
            .await
            .unwrap()
            .status()
            == 200
    };
    assert!(
        old_session_works().await,
        "not revoked yet: the network refuses"
    );
    http.unreachable.lock().unwrap().clear();
    let deadline = Instant::now() + Duration::from_secs(30);
    while old_session_works().await {
        assert!(
            Instant::now() < deadline,
            "the old session was never revoked"
        );
        let _ = e.sync_now().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        e.status().state,
        SessionState::Online,
        "the new session lives"
    );
    assert_eq!(
        vault.accounts().len(),
        1,
        "only the new session's entry is left"
    );
}

/// `last_sync_at` is the last sync that worked; a failed attempt is shown
/// beside it with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_is_shown_beside_the_last_good_one() {
    let server = TestServer::start(&[]);
    server.add_user("lu", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let e = signed_in(&server, dir.path(), &vault, &http, "lu").await;
    let good = synced(&e).await.last_sync_at.unwrap();
    http.unreachable.lock().unwrap().push("v1/sync/pull".into());
    e.save_note(None, None, "x".into(), "y".into())
        .await
        .unwrap();
    assert!(e.sync_now().await.is_err());
    let st = e.status();
    assert_eq!(st.last_sync_at, Some(good), "{st:?}");
    assert!(st.last_sync_attempt_at.unwrap() >= good);
    assert!(
        st.last_sync_result
            .as_deref()
            .unwrap()
            .contains("cannot be reached"),
        "{st:?}"
    );
}

/// A sync the user starts on a dead connection ends when the heartbeat
/// fails, as the engine's own syncs do (not at the sync timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_on_a_dead_connection_ends_with_the_heartbeat() {
    let server = TestServer::start(&[]);
    server.add_user("max", PW);
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    // A patient request timeout: only the heartbeat can end the sync early.
    let mut config = test_config(dir.path());
    config.timeouts.request = Duration::from_secs(60);
    let e = Engine::start(
        config,
        Arc::new(vault),
        Arc::new(http),
        Arc::new(latchkey_client::SystemClock),
    )
    .await
    .unwrap();
    e.sign_in(&server.url(), "max", PW).await.unwrap();
    synced(&e).await;
    // Black-holed: the process (every instance, behind nginx) stops
    // answering, connections hang.
    let pids = server.pids();
    pids.iter().for_each(|&pid| signal_pid(pid, libc::SIGSTOP));
    let started = Instant::now();
    let result = e.sync_now().await;
    let took = started.elapsed();
    pids.iter().for_each(|&pid| signal_pid(pid, libc::SIGCONT));
    assert_eq!(result.unwrap_err().code(), "network");
    // The request and sync timeouts are 60 s; the heartbeat (200 ms, probe
    // timeout 1 s) ends it within a few seconds.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
