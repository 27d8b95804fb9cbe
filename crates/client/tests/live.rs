//! Live sync, the trash, search and history (issue 12) as a user sees them:
//! two engines of one user (two devices: data dirs and vaults of their
//! own) against the real `latchkey-server` process on 127.0.0.1.
//!
//! Every engine here has a 10-minute backstop sync, so that an edit that
//! shows up on the other device within seconds can only have come by the
//! live-updates stream (or the catch-up when a stream opens). Waits poll
//! with generous deadlines: a loaded 2-core machine must pass too.

use std::sync::Arc;
use std::time::Duration;

use latchkey_client::{Config, Engine, Note, SessionState, SystemClock, Vault};
use latchkey_testkit::proxy::Proxy;
use latchkey_testkit::*;
use uuid::Uuid;

/// How long anything the user waits for may take here, at most: far more
/// than it takes (well under a second), far less than the backstop.
const SECS: u64 = 20;

/// The test kit's fast timings, but the backstop sync ten minutes away,
/// and a probe that a loaded machine never misses (a missed one takes the
/// engine offline and brings a reconnect sync, which is not the stream).
fn live_config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.sync_interval = Duration::from_secs(600);
    c.heartbeat = Duration::from_millis(500);
    c.timeouts.probe = Duration::from_secs(5);
    c.timeouts.request = Duration::from_secs(10);
    c
}

/// One device: its own data dir, keychain and transport.
struct Device {
    _dir: tempfile::TempDir,
    vault: MemoryVault,
    http: TestHttp,
    engine: Engine,
}

impl std::ops::Deref for Device {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// A device signed in as `user` at `url` (the server's, or a proxy's), online.
async fn device(url: &str, user: &str) -> Device {
    device_with(url, user, |_| {}).await
}

/// [`device`] with `tweak` applied to its [`live_config`].
async fn device_with(url: &str, user: &str, tweak: impl FnOnce(&mut Config)) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let (vault, http) = (MemoryVault::new(), TestHttp::new());
    let mut config = live_config(dir.path());
    tweak(&mut config);
    let engine = Engine::start(
        config,
        Arc::new(vault.clone()) as Arc<dyn Vault>,
        Arc::new(http.clone()),
        Arc::new(SystemClock),
    )
    .await
    .expect("the engine starts");
    engine.sign_in(url, user, PW).await.expect("sign in");
    wait_state(&engine, SessionState::Online, SECS).await;
    Device {
        _dir: dir,
        vault,
        http,
        engine,
    }
}

/// A server with one user, `user`.
fn server_with(user: &str) -> TestServer {
    let server = TestServer::start(&[]);
    server.add_user(user, PW);
    server
}

/// Waits until `engine`'s notes satisfy `pred`; returns them.
///
/// # Panics
/// After [`SECS`], with `what` and the notes it had.
async fn wait_notes(engine: &Engine, what: &str, pred: impl Fn(&[Note]) -> bool) -> Vec<Note> {
    let found = poll_until(Duration::from_secs(SECS), || async {
        let notes = engine.list_notes().await.expect("list notes");
        pred(&notes).then_some(notes)
    })
    .await;
    match found {
        Some((notes, _)) => notes,
        None => panic!(
            "timed out waiting for {what}; the notes: {:?}",
            engine.list_notes().await
        ),
    }
}

/// Waits until `engine` shows a note holding `body`; returns its notes.
async fn wait_body(engine: &Engine, what: &str, body: &str) -> Vec<Note> {
    wait_notes(engine, what, |n| with_body(n, body).is_some()).await
}

/// The note holding `body`, if any.
fn with_body<'a>(notes: &'a [Note], body: &str) -> Option<&'a Note> {
    notes.iter().find(|n| n.body == body)
}

/// Waits until `engine` has sent everything it holds.
async fn synced(engine: &Engine) {
    wait_for(engine, SECS, "online with nothing pending", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
}

/// Waits until a device that started on an empty account is past the
/// syncs of its start: the first full sync (its session check) and the
/// catch-up of its first stream, each pulled once. From then on nothing
/// but an edit or the stream makes it sync, for ten minutes.
async fn settled(d: &Device) {
    synced(d).await;
    until("the syncs of the start", || {
        let calls = d.http.calls.lock().unwrap();
        let count = |what: &str| calls.iter().filter(|c| *c == what).count();
        count("v1/auth/session") >= 1 && count("v1/sync/events") >= 1 && count("v1/sync/pull") >= 2
    })
    .await;
}

/// A server with `user`, and two devices of theirs: A talks to the server,
/// B through a fault proxy. Returns once both are synced and B's stream
/// is open.
async fn behind_a_proxy(user: &str) -> (TestServer, Proxy, Device, Device) {
    let server = server_with(user);
    let proxy = Proxy::start(server.port).await;
    let a = device(&server.url(), user).await;
    let b = device(&proxy.url(), user).await;
    synced(&a).await;
    synced(&b).await;
    until("B's stream open", || proxy.streams_open() == 1).await;
    (server, proxy, a, b)
}

/// Waits until `cond` holds (polled), or panics with `what`.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let ok = poll_until(Duration::from_secs(SECS), || async { cond().then_some(()) }).await;
    assert!(ok.is_some(), "timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_on_one_device_shows_on_the_other_without_a_sync() {
    let server = server_with("lena");
    let a = device(&server.url(), "lena").await;
    let b = device(&server.url(), "lena").await;
    settled(&a).await;
    settled(&b).await;
    let b_calls = b.http.calls.lock().unwrap().len();

    // A writes; B shows it.
    let note = a
        .save_note(None, None, "Groceries".into(), "eggs".into())
        .await
        .unwrap();
    let on_b = wait_body(&b, "A's new note on B", "eggs").await;
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0].id, note.id);
    // B pulled without a full sync (whose first call is the session check).
    let calls: Vec<String> = b.http.calls.lock().unwrap()[b_calls..].to_vec();
    assert!(calls.iter().any(|c| c == "v1/sync/pull"), "{calls:?}");
    assert!(!calls.iter().any(|c| c == "v1/auth/session"), "{calls:?}");

    // B edits it; A shows that.
    let b_note = &on_b[0];
    b.save_note(
        Some(b_note.id),
        Some(b_note.version),
        "Groceries".into(),
        "eggs, milk".into(),
    )
    .await
    .unwrap();
    let on_a = wait_body(&a, "B's edit on A", "eggs, milk").await;
    assert_eq!(on_a.len(), 1, "an edit, not a copy: {on_a:?}");

    // A deletes it; on B it is gone from the list and in the trash with
    // the last text.
    a.delete_note(note.id).await.unwrap();
    wait_notes(&b, "the delete on B", |n| n.is_empty()).await;
    let trash = b.list_trash().await.unwrap();
    assert_eq!(trash.len(), 1, "{trash:?}");
    assert_eq!(trash[0].id, note.id);
    assert_eq!(
        (trash[0].title.as_str(), trash[0].body.as_str()),
        ("Groceries", "eggs, milk")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_the_network_is_opened_again() {
    let (_server, proxy, a, b) = behind_a_proxy("mona").await;

    proxy.cut_streams();
    until("the stream cut", || proxy.streams_cut() == 1).await;
    until("B's stream open again", || {
        proxy.requests_to("events") >= 2 && proxy.streams_open() == 1
    })
    .await;
    assert_eq!(
        b.status().state,
        SessionState::Online,
        "a cut stream is not offline"
    );

    a.save_note(None, None, "After the cut".into(), "still live".into())
        .await
        .unwrap();
    wait_body(&b, "A's note on B", "still live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_an_online_device_at_once_and_its_edit_is_kept() {
    let server = server_with("nina");
    let b = device(&server.url(), "nina").await;
    settled(&b).await;

    // An edit whose push is refused (413, as by a proxy with a lower limit):
    // it stays in the outbox, and B stays online.
    b.http
        .push_limit
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let before = b.http.calls.lock().unwrap().len();
    b.save_note(None, None, "Unsent".into(), "kept in the outbox".into())
        .await
        .unwrap();
    // The sync the edit brings, to its end: a session check, the refused
    // push, then the pull. Nothing else is due for ten minutes.
    until("the sync after the edit", || {
        let calls = b.http.calls.lock().unwrap();
        let mut after = calls[before..].iter();
        after.any(|c| c == "v1/auth/session")
            && after.any(|c| c == "v1/sync/push")
            && after.any(|c| c == "v1/sync/pull")
    })
    .await;
    until("the sync's outcome shown", || {
        b.status().last_error.is_some_and(|e| e.code == "too_large")
    })
    .await;
    let st = b.status();
    assert_eq!((st.state, st.pending), (SessionState::Online, 1), "{st:?}");

    let b_calls = b.http.calls.lock().unwrap().len();
    revoke_user_now(&server, "nina", PW).await;
    let st = wait_state(&b, SessionState::Revoked, 10).await;
    // Only the stream told it: no call of B's asked the server since.
    let calls: Vec<String> = b.http.calls.lock().unwrap()[b_calls..].to_vec();
    assert!(
        calls
            .iter()
            .all(|c| c == "healthz" || c == "v1/sync/events"),
        "{calls:?}"
    );
    assert_eq!(st.pending, 1, "{st:?}");
    assert!(
        b.vault.accounts().is_empty(),
        "the dead session's tokens are gone"
    );
    assert!(with_body(&b.list_notes().await.unwrap(), "kept in the outbox").is_some());

    b.http
        .push_limit
        .store(0, std::sync::atomic::Ordering::SeqCst);
    b.sign_in(&server.url(), "nina", PW).await.unwrap();
    synced(&b).await;
    let on_server = server_notes(&server.url(), "nina", PW).await;
    assert_eq!(
        on_server,
        vec![("Unsent".into(), "kept in the outbox".into(), false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_offline_closes_the_stream_and_holds_back_other_devices_edits() {
    let (_server, proxy, a, b) = behind_a_proxy("olga").await;

    b.set_work_offline(true);
    until("B's stream closed", || proxy.streams_open() == 0).await;
    let requests = proxy.requests();
    let note = a
        .save_note(None, None, "While B works offline".into(), "held".into())
        .await
        .unwrap();
    synced(&a).await;
    // A has pushed; B, working offline, neither asks nor hears of it (the
    // live path takes well under a second).
    let arrived = poll_until(Duration::from_secs(3), || async {
        let notes = b.list_notes().await.unwrap();
        with_body(&notes, "held").map(|_| ())
    })
    .await;
    assert!(
        arrived.is_none(),
        "an edit reached a device working offline"
    );
    assert_eq!(
        proxy.requests(),
        requests,
        "no traffic while working offline"
    );
    assert_eq!(proxy.streams_open(), 0);

    b.set_work_offline(false);
    let on_b = wait_body(&b, "A's note on B", "held").await;
    assert_eq!(on_b[0].id, note.id);
    until("B's stream open again", || proxy.streams_open() == 1).await;
    a.save_note(
        Some(note.id),
        Some(note.version),
        "While B works offline".into(),
        "held, then live".into(),
    )
    .await
    .unwrap();
    wait_body(&b, "A's edit on B", "held, then live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_restored_from_the_trash_offline_comes_back_everywhere_once() {
    let server = server_with("pia");
    let a = device(&server.url(), "pia").await;
    let b = device(&server.url(), "pia").await;
    let note = a
        .save_note(None, None, "Recipe".into(), "flour, water, salt".into())
        .await
        .unwrap();
    synced(&a).await;
    wait_notes(&b, "the note on B", |n| n.len() == 1).await;

    a.delete_note(note.id).await.unwrap();
    synced(&a).await;
    wait_notes(&b, "the delete on B", |n| n.is_empty()).await;
    assert!(server_notes(&server.url(), "pia", PW).await.is_empty());

    a.set_work_offline(true);
    let trash = a.list_trash().await.unwrap();
    assert_eq!(trash.len(), 1);
    let back = a.restore_from_trash(note.id).await.unwrap();
    assert_eq!(
        (back.id, back.body.as_str()),
        (note.id, "flour, water, salt")
    );
    assert!(a.list_trash().await.unwrap().is_empty());
    assert_eq!(a.status().pending, 1);

    a.set_work_offline(false);
    synced(&a).await;
    let on_b = wait_notes(&b, "the restored note on B", |n| !n.is_empty()).await;
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(
        (on_b[0].id, on_b[0].body.as_str()),
        (note.id, "flour, water, salt")
    );
    assert!(
        b.list_trash().await.unwrap().is_empty(),
        "B's trash let it go"
    );
    assert_eq!(
        server_notes(&server.url(), "pia", PW).await,
        vec![("Recipe".into(), "flour, water, salt".into(), false)],
        "live on the server, once"
    );
    assert_eq!(a.list_notes().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_notes_saved_here_and_pulled_from_elsewhere_by_a_word_prefix() {
    let server = server_with("rosa");
    let a = device(&server.url(), "rosa").await;
    let b = device(&server.url(), "rosa").await;
    let mine = b
        .save_note(
            None,
            None,
            "Aquarium".into(),
            "the zebrafish need feeding".into(),
        )
        .await
        .unwrap();
    let found = b.search_notes("zebra".into()).await.unwrap();
    assert_eq!(
        found.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![mine.id]
    );

    let theirs = a
        .save_note(
            None,
            None,
            "Zoo trip".into(),
            "Zebras at noon, lions after".into(),
        )
        .await
        .unwrap();
    wait_notes(&b, "A's note on B", |n| n.len() == 2).await;
    let mut found: Vec<Uuid> = b
        .search_notes("zeb".into())
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    found.sort();
    let mut both = vec![mine.id, theirs.id];
    both.sort();
    assert_eq!(found, both);
    // Every word must match, each as the start of a word.
    let found = b.search_notes("zeb noon".into()).await.unwrap();
    assert_eq!(
        found.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![theirs.id]
    );
    assert!(b.search_notes("ebra".into()).await.unwrap().is_empty());

    // Deleted on A: B no longer finds it.
    a.delete_note(theirs.id).await.unwrap();
    wait_notes(&b, "the delete on B", |n| n.len() == 1).await;
    let found = b.search_notes("zeb".into()).await.unwrap();
    assert_eq!(
        found.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![mine.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notes_history_comes_from_the_server_and_a_version_can_be_restored() {
    let server = server_with("sara");
    let a = device(&server.url(), "sara").await;
    let mut note = a
        .save_note(None, None, "Draft".into(), "v0".into())
        .await
        .unwrap();
    synced(&a).await;
    for i in 1..=3 {
        note = a
            .save_note(
                Some(note.id),
                Some(note.version),
                "Draft".into(),
                format!("v{i}"),
            )
            .await
            .unwrap();
        // Each edit synced on its own: the server keeps each version.
        synced(&a).await;
    }
    let history = a.note_history(note.id).await.unwrap();
    let bodies: Vec<&str> = history.iter().map(|v| v.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["v2", "v1", "v0"],
        "newest first, the current one left out"
    );
    assert!(history.windows(2).all(|w| w[0].rev > w[1].rev));

    // Restoring v0 is a save of its text on the current version.
    let current = a.get_note(note.id).await.unwrap();
    let old = history.last().unwrap();
    let restored = a
        .save_note(
            Some(note.id),
            Some(current.version),
            old.title.clone(),
            old.body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(restored.id, note.id, "a restore is no conflict copy");
    synced(&a).await;
    let history = a.note_history(note.id).await.unwrap();
    let bodies: Vec<&str> = history.iter().map(|v| v.body.as_str()).collect();
    assert_eq!(bodies, ["v3", "v2", "v1", "v0"]);
    assert_eq!(
        server_notes(&server.url(), "sara", PW).await,
        vec![("Draft".into(), "v0".into(), false)]
    );

    // Working offline: at once, and without asking anyone.
    a.set_work_offline(true);
    let calls = a.http.calls.lock().unwrap().len();
    let started = std::time::Instant::now();
    let e = a.note_history(note.id).await.unwrap_err();
    assert_eq!(e.code(), "offline", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(a.http.calls.lock().unwrap().len(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_pulls_once_not_again_for_the_news_of_its_own_push() {
    let server = server_with("uma");
    // Syncs only when told: each edit is one sync, start to end.
    let a = device_with(&server.url(), "uma", |c| {
        c.edit_debounce = Duration::from_secs(600)
    })
    .await;
    settled(&a).await;
    let pulls = a.http.count("v1/sync/pull");
    let mut note = a
        .save_note(None, None, "Log".into(), "0".into())
        .await
        .unwrap();
    a.sync_now().await.unwrap();
    for i in 1..5 {
        note = a
            .save_note(
                Some(note.id),
                Some(note.version),
                "Log".into(),
                format!("{i}"),
            )
            .await
            .unwrap();
        a.sync_now().await.unwrap();
    }
    // Each push is announced on A's own stream while its sync runs, and
    // that sync's pull has brought it by the time a catch-up could: none
    // runs. A second for the last announcement to come and be read.
    let more = poll_until(Duration::from_secs(1), || async {
        (a.http.count("v1/sync/pull") - pulls > 5).then_some(())
    })
    .await;
    let calls = a.http.calls.lock().unwrap().clone();
    assert!(more.is_none(), "{calls:?}");
    assert_eq!(a.http.count("v1/sync/pull") - pulls, 5, "{calls:?}");
}
