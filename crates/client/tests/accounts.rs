//! Accounts and devices (issue 13) through the engine's API, against the
//! real `latchkey-server` process on 127.0.0.1: the list of signed-in
//! devices, signing one or all the others out, a password change, and
//! several accounts on one data dir switched offline and online with
//! nothing crossing between them.
//!
//! Waits poll with generous deadlines: a loaded 2-core machine must pass.

use std::sync::Arc;
use std::time::Duration;

use latchkey_client::{Config, Engine, Error, ExposeSecret, SessionState, SystemClock, Vault};
use latchkey_testkit::proxy::{Fault, Link, Proxy, scripted};
use latchkey_testkit::*;

/// How long anything the user waits for may take here, at most.
const SECS: u64 = 20;

/// One device: its own data dir, keychain and transport.
struct Device {
    dir: tempfile::TempDir,
    vault: MemoryVault,
    engine: Engine,
}

impl std::ops::Deref for Device {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

fn config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.timeouts.probe = Duration::from_secs(5);
    c.timeouts.request = Duration::from_secs(10);
    c
}

async fn start(dir: &std::path::Path, vault: &MemoryVault) -> Engine {
    Engine::start(
        config(dir),
        Arc::new(vault.clone()) as Arc<dyn Vault>,
        Arc::new(TestHttp::new()),
        Arc::new(SystemClock),
    )
    .await
    .expect("the engine starts")
}

/// A device named `name`, signed in as `user` at `url`, online.
async fn device(url: &str, user: &str, name: &str) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let vault = MemoryVault::new();
    let engine = start(dir.path(), &vault).await;
    engine.set_device_name(Some(name)).await.unwrap();
    engine.sign_in(url, user, PW).await.expect("sign in");
    wait_state(&engine, SessionState::Online, SECS).await;
    Device { dir, vault, engine }
}

fn server_with(users: &[&str]) -> TestServer {
    let server = TestServer::start(&[]);
    for user in users {
        server.add_user(user, PW);
    }
    server
}

/// The devices `d` lists, as (name, current), in the server's order.
async fn listed(d: &Engine) -> Vec<(String, bool)> {
    d.list_sessions()
        .await
        .expect("list the devices")
        .into_iter()
        .map(|s| (s.device_name.unwrap_or_default(), s.current))
        .collect()
}

/// The session id of the device `d` lists under `name`.
async fn id_of(d: &Engine, name: &str) -> String {
    d.list_sessions()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.device_name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not listed"))
        .session_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_are_listed_and_signed_out_one_by_one_or_all_at_once() {
    let server = server_with(&["ines"]);
    let laptop = device(&server.url(), "ines", "Laptop").await;
    let phone = device(&server.url(), "ines", "Phone").await;
    let tablet = device(&server.url(), "ines", "Tablet").await;

    let mut all = listed(&laptop).await;
    all.sort();
    assert_eq!(
        all,
        [
            ("Laptop".to_string(), true),
            ("Phone".to_string(), false),
            ("Tablet".to_string(), false)
        ]
    );
    let first = laptop.list_sessions().await.unwrap();
    assert!(first.iter().all(|s| s.created_at > 0 && s.last_seen_at > 0));

    // The phone is signed out; online, it learns at once and keeps its
    // unsynced edit.
    phone.set_work_offline(true);
    phone
        .save_note(None, None, "phone".into(), "typed on the phone".into())
        .await
        .unwrap();
    let phone_id = id_of(&laptop, "Phone").await;
    laptop.revoke_session(&phone_id).await.unwrap();
    phone.set_work_offline(false);
    let st = wait_state(&phone, SessionState::Revoked, SECS).await;
    assert_eq!(st.pending, 1, "the unsynced edit is kept: {st:?}");
    assert_eq!(phone.list_notes().await.unwrap().len(), 1);
    // Gone from the list; a second sign-out of it is a clear error.
    let names: Vec<String> = listed(&laptop).await.into_iter().map(|n| n.0).collect();
    assert!(!names.contains(&"Phone".to_string()), "{names:?}");
    let again = laptop.revoke_session(&phone_id).await.unwrap_err();
    assert_eq!(again, Error::SessionNotFound);
    // This device is signed out with Sign out, not from the list.
    let me = id_of(&laptop, "Laptop").await;
    assert_eq!(
        laptop.revoke_session(&me).await.unwrap_err().code(),
        "invalid_input"
    );
    assert_eq!(
        laptop.revoke_session("../../x").await.unwrap_err().code(),
        "invalid_input"
    );

    // Signing in again, the phone sends its edit.
    phone.sign_in(&server.url(), "ines", PW).await.unwrap();
    wait_for(&phone, SECS, "the phone synced", |s| s.pending == 0).await;

    // All the others at once: the phone (again) and the tablet.
    assert_eq!(laptop.revoke_other_sessions().await.unwrap(), 2);
    wait_state(&tablet, SessionState::Revoked, SECS).await;
    wait_state(&phone, SessionState::Revoked, SECS).await;
    assert_eq!(listed(&laptop).await, [("Laptop".to_string(), true)]);
    assert_eq!(laptop.status().state, SessionState::Online);
    let on_server = server_notes(&server.url(), "ines", PW).await;
    assert!(
        on_server.iter().any(|n| n.1 == "typed on the phone"),
        "{on_server:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_keeps_this_device_and_signs_the_others_out() {
    let server = server_with(&["omar"]);
    let here = device(&server.url(), "omar", "Here").await;
    let other = device(&server.url(), "omar", "Other").await;
    let account = &here.vault.accounts()[0];
    // The session kept in the keychain: its id and refresh token.
    let kept = |d: &Device| {
        let raw = d.vault.raw(account).expect("the keychain entry is there");
        let entry = latchkey_client::VaultEntry::from_json(&raw).unwrap();
        (
            entry.session_id,
            entry.refresh_token.expose_secret().to_owned(),
        )
    };
    let before = kept(&here);

    // Refused before anything is sent.
    for (current, new) in [("", "a long new one"), (PW, "short"), (PW, PW)] {
        let e = here.change_password(current, new).await.unwrap_err();
        assert_eq!(e.code(), "invalid_input", "{current:?} -> {new:?}: {e}");
    }
    let too_long = "x".repeat(1025);
    assert_eq!(
        here.change_password(PW, &too_long)
            .await
            .unwrap_err()
            .code(),
        "invalid_input"
    );
    // A wrong current password is a clear sentence, and nobody is signed out.
    let wrong = here
        .change_password("not my password", "a brand new password")
        .await
        .unwrap_err();
    assert_eq!(wrong, Error::WrongPassword);
    assert_eq!(wrong.to_string(), "the current password is wrong");
    assert_eq!(here.status().state, SessionState::Online);
    assert_eq!(other.status().state, SessionState::Online);

    let new_pw = "a brand new password";
    assert_eq!(here.change_password(PW, new_pw).await.unwrap(), 1);
    wait_state(&other, SessionState::Revoked, SECS).await;
    // This device goes on, on the same keychain entry.
    here.sync_now().await.unwrap();
    assert_eq!(here.status().state, SessionState::Online);
    assert!(
        kept(&here) == before,
        "the same session, the same refresh token"
    );
    assert_eq!(listed(&here).await, [("Here".to_string(), true)]);
    // The old password no longer signs in; the new one does.
    let e = other.sign_in(&server.url(), "omar", PW).await.unwrap_err();
    assert_eq!(e, Error::InvalidCredentials);
    other.sign_in(&server.url(), "omar", new_pw).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_the_account_calls_say_offline_at_once_and_sign_nobody_out() {
    let server = server_with(&["pia"]);
    let proxy = Proxy::start(server.port).await;
    let d = device(&proxy.url(), "pia", "Desk").await;

    let calls = |d: &Device| {
        let e: &Engine = d;
        let e = e.clone();
        async move {
            [
                e.list_sessions().await.map(|_| ()),
                e.revoke_session(&uuid::Uuid::new_v4().to_string()).await,
                e.revoke_other_sessions().await.map(|_| ()),
                e.change_password(PW, "another password").await.map(|_| ()),
            ]
        }
    };
    // Working offline.
    d.set_work_offline(true);
    for r in calls(&d).await {
        assert_eq!(r.unwrap_err().code(), "offline");
    }
    d.set_work_offline(false);
    wait_state(&d, SessionState::Online, SECS).await;

    // The server gone: offline within seconds, then every call says so at
    // once, and the session stays.
    proxy.set_link(Link::Refused);
    wait_state(&d, SessionState::Offline, SECS).await;
    let started = std::time::Instant::now();
    for r in calls(&d).await {
        let e = r.unwrap_err();
        assert_eq!(e.code(), "offline", "{e}");
        assert!(e.to_string().contains("Latchkey is offline now"), "{e}");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "no call waited");
    assert_eq!(d.status().state, SessionState::Offline);
    proxy.set_link(Link::Up);
    wait_state(&d, SessionState::Online, SECS).await;
    assert_eq!(listed(&d).await, [("Desk".to_string(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_on_one_data_dir_switch_offline_and_online_and_nothing_crosses() {
    // Ann on one server, Ben on another.
    let (s1, s2) = (server_with(&["ann"]), server_with(&["ben"]));
    let d = device(&s1.url(), "ann", "Desk").await;
    d.save_note(None, None, "ann".into(), "ann's first".into())
        .await
        .unwrap();
    wait_for(&d, SECS, "ann synced", |s| s.pending == 0).await;

    // Ben signs in on the same device: Ann stays signed in.
    d.sign_in(&s2.url(), "ben", PW).await.unwrap();
    let st = wait_state(&d, SessionState::Online, SECS).await;
    assert_eq!(st.user.as_ref().unwrap().username, "ben");
    let accounts: Vec<(&str, bool)> = st
        .accounts
        .iter()
        .map(|a| (a.username.as_str(), a.active))
        .collect();
    assert_eq!(accounts, [("ann", false), ("ben", true)]);
    assert!(d.list_notes().await.unwrap().is_empty(), "none of Ann's");
    d.save_note(None, None, "ben".into(), "ben's first".into())
        .await
        .unwrap();
    wait_for(&d, SECS, "ben synced", |s| s.pending == 0).await;
    assert_eq!(d.vault.accounts().len(), 2, "one keychain entry each");

    // Offline, switch to Ann: her notes only, and her edits queue.
    d.set_work_offline(true);
    let st = d.switch_account(&s1.url(), "ann").await.unwrap();
    assert_eq!(st.state, SessionState::Offline);
    assert_eq!(st.user.as_ref().unwrap().username, "ann");
    assert_eq!(st.server.as_deref(), Some(s1.url().as_str()));
    let bodies = |notes: Vec<latchkey_client::Note>| -> Vec<String> {
        notes.into_iter().map(|n| n.body).collect()
    };
    assert_eq!(bodies(d.list_notes().await.unwrap()), ["ann's first"]);
    d.save_note(None, None, "ann".into(), "ann offline".into())
        .await
        .unwrap();
    assert_eq!(d.status().pending, 1);
    // Back to Ben, still offline: his notes, none pending.
    let st = d.switch_account(&s2.url(), "ben").await.unwrap();
    assert_eq!((st.state, st.pending), (SessionState::Offline, 0));
    assert_eq!(bodies(d.list_notes().await.unwrap()), ["ben's first"]);
    d.save_note(None, None, "ben".into(), "ben offline".into())
        .await
        .unwrap();

    // Online again: only the active account (Ben) syncs.
    d.set_work_offline(false);
    wait_for(&d, SECS, "ben online and synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    let ann_on_server = || async { server_notes(&s1.url(), "ann", PW).await };
    let ben_on_server = server_notes(&s2.url(), "ben", PW).await;
    assert_eq!(ann_on_server().await.len(), 1, "Ann's offline note waits");
    assert_eq!(ben_on_server.len(), 2, "{ben_on_server:?}");

    // Switching to Ann online syncs hers.
    d.switch_account(&s1.url(), "ann").await.unwrap();
    wait_for(&d, SECS, "ann online and synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    let mut ann: Vec<String> = ann_on_server().await.into_iter().map(|n| n.1).collect();
    ann.sort();
    assert_eq!(ann, ["ann offline", "ann's first"]);
    let mut ben: Vec<String> = server_notes(&s2.url(), "ben", PW)
        .await
        .into_iter()
        .map(|n| n.1)
        .collect();
    ben.sort();
    assert_eq!(ben, ["ben offline", "ben's first"]);

    // Each keychain entry holds its own account's session.
    for name in d.vault.accounts() {
        let raw = d.vault.raw(&name).unwrap();
        let entry = latchkey_client::VaultEntry::from_json(&raw).unwrap();
        assert_eq!(name, format!("{}@{}", entry.user.username, entry.server));
    }

    // A restart comes back to the active account, with both signed in.
    let (dir, vault) = (d.dir, d.vault.clone());
    drop(d.engine);
    let e = start(dir.path(), &vault).await;
    let st = wait_state(&e, SessionState::Online, SECS).await;
    assert_eq!(st.user.as_ref().unwrap().username, "ann");
    assert_eq!(st.accounts.len(), 2);

    // Signing out of Ann leaves Ben signed in, one switch away.
    e.sign_out(false).await.unwrap();
    let st = e.status();
    assert_eq!(st.state, SessionState::SignedOut);
    assert_eq!(st.accounts.len(), 1);
    assert_eq!(
        (st.accounts[0].username.as_str(), st.accounts[0].active),
        ("ben", false)
    );
    assert_eq!(vault.accounts().len(), 1, "Ann's entry is gone");
    let st = e.switch_account(&s2.url(), "ben").await.unwrap();
    assert_eq!(st.user.unwrap().username, "ben");
    assert_eq!(bodies(e.list_notes().await.unwrap()).len(), 2);
    // An account not signed in here is a clear error.
    let err = e.switch_account(&s1.url(), "ann").await.unwrap_err();
    assert_eq!(err.code(), "invalid_input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_cut_by_a_switch_never_goes_on_with_the_other_accounts_token() {
    // Cleo reaches the server through a proxy that holds her push on the
    // wire while the device switches to Dan: the rest of her sync (the
    // pull after the push) must not run with Dan's token into her notes.
    let server = server_with(&["cleo", "dan"]);
    let proxy = Proxy::start(server.port).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = MemoryVault::new();
    let e = start(dir.path(), &vault).await;
    let synced = |who: &'static str| {
        let e = e.clone();
        async move {
            wait_for(&e, SECS, who, |s| {
                s.state == SessionState::Online
                    && s.pending == 0
                    && s.user.as_ref().is_some_and(|u| u.username == who)
            })
            .await
        }
    };
    e.sign_in(&server.url(), "dan", PW).await.unwrap();
    // Dan's revs run past where Cleo's cursor will be.
    for _ in 0..3 {
        e.save_note(None, None, "dan".into(), "his".into())
            .await
            .unwrap();
    }
    synced("dan").await;
    e.sign_in(&proxy.url(), "cleo", PW).await.unwrap();
    synced("cleo").await;
    // Her stream open, so that its first catch-up is not what pushes
    // (the switch closes the stream and ends its catch-up anyway).
    let open = poll_until(Duration::from_secs(SECS), || async {
        (proxy.streams_open() == 1).then_some(())
    })
    .await;
    assert!(open.is_some(), "Cleo's stream opened");
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.set_policy(scripted([Fault::Delay(Duration::from_secs(2))], |r| {
        r.is_push()
    }));
    let pushes = proxy.requests_to("push");
    e.save_note(None, None, "cleo".into(), "hers".into())
        .await
        .unwrap();
    let held = poll_until(Duration::from_secs(SECS), || async {
        (proxy.requests_to("push") > pushes).then_some(())
    })
    .await;
    assert!(held.is_some(), "Cleo's push reached the proxy");
    e.switch_account(&server.url(), "dan").await.unwrap();
    synced("dan").await;
    // Past the held push and whatever followed it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bodies = |notes: Vec<latchkey_client::Note>| -> Vec<String> {
        notes.into_iter().map(|n| n.body).collect()
    };
    assert_eq!(bodies(e.list_notes().await.unwrap()), ["his"; 3]);
    e.switch_account(&proxy.url(), "cleo").await.unwrap();
    synced("cleo").await;
    assert_eq!(bodies(e.list_notes().await.unwrap()), ["hers"]);
    let on_server = |who: &'static str| {
        let url = server.url();
        async move { bodies_of(server_notes(&url, who, PW).await) }
    };
    assert_eq!(on_server("cleo").await, ["hers"]);
    assert_eq!(on_server("dan").await, ["his"; 3]);
}

fn bodies_of(notes: Vec<(String, String, bool)>) -> Vec<String> {
    notes.into_iter().map(|n| n.1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_switches_during_syncs_lose_nothing_and_mix_nothing() {
    // Both accounts on one server; the switches come at varying moments of
    // the syncs that each save starts.
    let server = server_with(&["cleo", "dan"]);
    let dir = tempfile::tempdir().unwrap();
    let vault = MemoryVault::new();
    let e = start(dir.path(), &vault).await;
    e.sign_in(&server.url(), "dan", PW).await.unwrap();
    wait_state(&e, SessionState::Online, SECS).await;
    e.sign_in(&server.url(), "cleo", PW).await.unwrap();
    wait_for(&e, SECS, "cleo synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    for round in 0..20 {
        e.save_note(None, None, format!("cleo {round}"), "hers".into())
            .await
            .unwrap();
        // The save schedules a sync; switch while it may be running.
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        e.switch_account(&server.url(), "dan").await.unwrap();
        e.save_note(None, None, format!("dan {round}"), "his".into())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        e.switch_account(&server.url(), "cleo").await.unwrap();
    }
    wait_for(&e, SECS, "cleo synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    e.switch_account(&server.url(), "dan").await.unwrap();
    wait_for(&e, SECS, "dan synced", |s| {
        s.state == SessionState::Online && s.pending == 0
    })
    .await;
    let bodies = |user: &'static str| {
        let url = server.url();
        async move {
            server_notes(&url, user, PW)
                .await
                .into_iter()
                .map(|n| n.1)
                .collect::<Vec<_>>()
        }
    };
    let (cleo, dan) = (bodies("cleo").await, bodies("dan").await);
    assert_eq!(cleo.len(), 20, "{cleo:?}");
    assert!(cleo.iter().all(|b| b == "hers"), "{cleo:?}");
    assert_eq!(dan.len(), 20, "{dan:?}");
    assert!(dan.iter().all(|b| b == "his"), "{dan:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sign_in_signs_nobody_out_and_a_new_one_replaces_the_old_session() {
    let server = server_with(&["eve", "fay"]);
    let d = device(&server.url(), "eve", "Desk").await;
    d.sign_in(&server.url(), "fay", PW).await.unwrap();
    wait_state(&d, SessionState::Online, SECS).await;

    // A wrong password, for the account put away and for the active one:
    // both stay signed in.
    for (active, again) in [("fay", "eve"), ("eve", "eve")] {
        d.switch_account(&server.url(), active).await.unwrap();
        let e = d.sign_in(&server.url(), again, "wrong").await.unwrap_err();
        assert_eq!(e, Error::InvalidCredentials);
        let st = d.status();
        assert_eq!(st.user.unwrap().username, active);
        assert_eq!(st.accounts.len(), 2, "{:?}", st.accounts);
        d.sync_now().await.expect("the active session still works");
    }
    d.switch_account(&server.url(), "eve").await.unwrap();
    let old = id_of(&d, "Desk").await;

    // Signing in to Eve again while she is put away: the new session
    // replaces the old one, on the server too.
    d.switch_account(&server.url(), "fay").await.unwrap();
    d.sign_in(&server.url(), "eve", PW).await.unwrap();
    wait_state(&d, SessionState::Online, SECS).await;
    let sessions = d.list_sessions().await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_ne!(sessions[0].session_id, old);
    assert_eq!(d.status().accounts.len(), 2);
    assert_eq!(d.vault.accounts().len(), 2, "one keychain entry each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_keychain_entry_takes_only_that_account_off_the_list() {
    let server = server_with(&["gil", "hana"]);
    let d = device(&server.url(), "gil", "Desk").await;
    d.save_note(None, None, "gil".into(), "kept".into())
        .await
        .unwrap();
    d.sign_in(&server.url(), "hana", PW).await.unwrap();
    let gil = format!("gil@{}", server.url());
    d.vault.put_raw(&gil, "{ not a session");
    let e = d.switch_account(&server.url(), "gil").await.unwrap_err();
    assert_eq!(e.code(), "token_invalid", "{e}");
    let st = d.status();
    assert_eq!(st.user.as_ref().unwrap().username, "hana", "still Hana's");
    let listed: Vec<&str> = st.accounts.iter().map(|a| a.username.as_str()).collect();
    assert_eq!(listed, ["hana"]);
    assert!(d.vault.raw(&gil).is_none(), "the damaged entry is gone");
    // Gil signs in again and finds his note.
    d.sign_in(&server.url(), "gil", PW).await.unwrap();
    let notes = d.list_notes().await.unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].body, "kept");
}
