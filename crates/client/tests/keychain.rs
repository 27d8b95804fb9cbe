//! The real OS keychain: a Secret Service (gnome-keyring) in a D-Bus session
//! of the test's own. Each outer test re-runs one inner test of this binary
//! inside `dbus-run-session`, with a keyring daemon and data folders of its
//! own, and asserts it passed; the inner tests are `#[ignore]`d so they only
//! ever run there. Linux only: the keychain under test is the Secret Service.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_client::{Config, Engine, KeyringVault, SessionState, SystemClock, Vault};
use latchkey_protocol::ExposeSecret;
use latchkey_testkit::*;

const INNER_ENV: &str = "LATCHKEY_KEYCHAIN_SESSION";

/// Runs `inner` of this test binary in a fresh D-Bus session with
/// gnome-keyring (unlocked unless `locked`), and returns its output.
fn in_keyring_session(inner: &str, locked: bool) -> std::process::Output {
    in_keyring_session_with(inner, locked, &[])
}

/// The same, with more arguments for `dbus-run-session`.
fn in_keyring_session_with(inner: &str, locked: bool, bus_args: &[&str]) -> std::process::Output {
    let keyring = if locked {
        Keyring::Locked
    } else {
        Keyring::Unlocked("latchkey-test")
    };
    DesktopSession::new(keyring)
        .bus_args(bus_args)
        .env(INNER_ENV, "1")
        .run_test(inner)
}

fn guard() -> bool {
    std::env::var_os(INNER_ENV).is_some()
}

/// Every file below `dir`, as bytes, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_bytes(&p));
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn the_session_lives_in_the_secret_service_and_nowhere_else() {
    in_keyring_session("inner_session_in_secret_service", false);
}

#[test]
#[ignore = "runs inside its own D-Bus session, started by the test above"]
fn inner_session_in_secret_service() {
    assert!(guard());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut server = TestServer::start(&[]);
        server.add_user("quinn", "pw-quinn-123");
        let dir = tempfile::tempdir().unwrap();
        let vault = KeyringVault::new("latchkey-test").expect("a Secret Service is running");
        let http = TestHttp::new();
        let start = || async {
            Engine::start(
                test_config(dir.path()),
                Arc::new(vault.clone()) as Arc<dyn Vault>,
                Arc::new(http.clone()),
                Arc::new(SystemClock),
            )
            .await
            .unwrap()
        };
        let e = start().await;
        e.sign_in(&server.url(), "quinn", "pw-quinn-123")
            .await
            .unwrap();
        e.save_note(None, None, "kept".into(), "offline".into())
            .await
            .unwrap();
        let account = latchkey_client::vault::account_name(&server.url(), "quinn");
        let raw = vault
            .load(&account)
            .unwrap()
            .expect("the entry is in the keychain");
        assert!(
            raw.len() < latchkey_client::vault::MAX_ENTRY_CHARS,
            "entry is {} chars",
            raw.len()
        );
        let entry = latchkey_client::VaultEntry::from_json(&raw).unwrap();
        // Neither the refresh token nor the access token is in clear in any
        // file: not the keyring (encrypted), not the app's data folder.
        let data_home = std::env::var("XDG_DATA_HOME").unwrap();
        assert!(Path::new(&data_home).join("keyrings").exists());
        for root in [Path::new(&data_home), dir.path()] {
            let bytes = all_bytes(root);
            assert!(
                !contains(&bytes, entry.refresh_token.expose_secret()),
                "refresh token in clear under {root:?}"
            );
            assert!(
                !contains(&bytes, &entry.access_token.expose_secret()[..60]),
                "access token in clear under {root:?}"
            );
        }
        server.stop();
        drop(e);
        // restart with no server: restored from the real keychain
        let e = start().await;
        assert_eq!(e.status().state, SessionState::Offline);
        assert_eq!(e.list_notes().await.unwrap().len(), 1);
        // signing out online deletes the entry
        server.restart();
        wait_state(&e, SessionState::Online, 20).await;
        e.sign_out(false).await.unwrap();
        assert!(vault.load(&account).unwrap().is_none());
    });
}

#[test]
fn the_keychain_stopping_mid_session_is_reported_and_the_session_goes_on() {
    // A bus that starts no services on demand: a stopped keyring daemon
    // stays stopped (the desktop's bus would start a new, locked one).
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        conf.path(),
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
    )
    .unwrap();
    let config = format!("--config-file={}", conf.path().display());
    in_keyring_session_with("inner_keychain_stops_mid_session", false, &[&config]);
}

/// Stops this session's keyring daemon: the one whose environment holds
/// this test's own `XDG_RUNTIME_DIR` (other tests run daemons of their own).
fn stop_keyring_daemon() {
    let ours = format!(
        "XDG_RUNTIME_DIR={}",
        std::env::var("XDG_RUNTIME_DIR").unwrap()
    );
    let mut stopped = 0;
    for proc in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
        let environ = std::fs::read(proc.path().join("environ")).unwrap_or_default();
        if comm.trim() == "gnome-keyring-d"
            && environ.split(|b| *b == 0).any(|v| v == ours.as_bytes())
        {
            let pid = proc.file_name().to_string_lossy().parse::<u32>().unwrap();
            signal_pid(pid, libc::SIGKILL);
            stopped += 1;
        }
    }
    assert_eq!(stopped, 1, "this session's keyring daemon");
}

#[test]
#[ignore = "runs inside its own D-Bus session, started by the test above"]
fn inner_keychain_stops_mid_session() {
    assert!(guard());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = TestServer::start(&[]);
        server.add_user("rowan", "pw-rowan-123");
        let dir = tempfile::tempdir().unwrap();
        let vault = KeyringVault::new("latchkey-test").expect("a Secret Service is running");
        let start = || async {
            Engine::start(
                test_config(dir.path()),
                Arc::new(vault.clone()) as Arc<dyn Vault>,
                Arc::new(TestHttp::new()),
                Arc::new(SystemClock),
            )
            .await
        };
        let e = start().await.unwrap();
        e.sign_in(&server.url(), "rowan", "pw-rowan-123")
            .await
            .unwrap();
        e.save_note(None, None, "before".into(), "the keychain went".into())
            .await
            .unwrap();

        stop_keyring_daemon();
        // The next write of the session (every confirmation writes it) fails:
        // shown, and the session goes on from memory.
        e.sync_now().await.unwrap();
        let st = wait_for(&e, 20, "the keychain error shown", |s| {
            s.last_error
                .as_ref()
                .is_some_and(|x| x.code == "keychain_unavailable")
        })
        .await;
        assert_eq!(st.state, SessionState::Online);
        let message = &st.last_error.unwrap().message;
        assert!(
            message.contains("keychain") && message.contains("sign in again"),
            "{message}"
        );
        e.save_note(None, None, "after".into(), "still saved".into())
            .await
            .unwrap();
        e.sync_now().await.unwrap();
        let on_server = server_notes(&server.url(), "rowan", "pw-rowan-123").await;
        let titles: Vec<&str> = on_server.iter().map(|n| n.0.as_str()).collect();
        assert!(
            titles.contains(&"before") && titles.contains(&"after"),
            "{titles:?}"
        );
        assert_eq!(e.status().state, SessionState::Online);
        drop(e);

        // A restart cannot read the session: a clear error, not a crash,
        // and the notes stay on disk for the next sign-in.
        match start().await {
            Err(err) => assert_eq!(err.code(), "keychain_unavailable"),
            Ok(e) => {
                let st = e.status();
                assert_eq!(st.state, SessionState::SignedOut);
                assert_eq!(
                    st.last_error.map(|x| x.code).as_deref(),
                    Some("keychain_unavailable")
                );
            }
        }
    });
}

/// The Secret Service seen from the test itself, to lock, watch and set up
/// keyrings the way a desktop would have them.
mod ss {
    use std::collections::HashMap;
    use std::time::Duration;

    use dbus::arg::{PropMap, RefArg, Variant};
    use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
    use dbus::blocking::{Connection, Proxy};
    use dbus::strings::Path;

    const DEST: &str = "org.freedesktop.secrets";
    const SERVICE: &str = "org.freedesktop.Secret.Service";
    const COLLECTION: &str = "org.freedesktop.Secret.Collection";

    pub fn connect() -> Connection {
        Connection::new_session().expect("the test's session bus")
    }

    fn service(c: &Connection) -> Proxy<'_, &Connection> {
        c.with_proxy(DEST, "/org/freedesktop/secrets", Duration::from_secs(5))
    }

    pub fn default_collection(c: &Connection) -> Path<'static> {
        let (p,): (Path<'static>,) = service(c)
            .method_call(SERVICE, "ReadAlias", ("default",))
            .unwrap();
        assert_ne!(&*p, "/", "a default keyring");
        p
    }

    /// Locking needs no prompt.
    pub fn lock(c: &Connection, collection: &Path<'static>) {
        let _: (Vec<Path<'static>>, Path<'static>) = service(c)
            .method_call(SERVICE, "Lock", (vec![collection.clone()],))
            .unwrap();
        assert!(is_locked(c, collection));
    }

    pub fn is_locked(c: &Connection, collection: &Path<'static>) -> bool {
        c.with_proxy(DEST, collection.clone(), Duration::from_secs(5))
            .get::<bool>(COLLECTION, "Locked")
            .unwrap()
    }

    type Secret = (Path<'static>, Vec<u8>, Vec<u8>, String);

    fn plain_secret(c: &Connection, value: &str) -> Secret {
        let (_, session): (Variant<Box<dyn RefArg>>, Path<'static>) = service(c)
            .method_call(
                SERVICE,
                "OpenSession",
                ("plain", Variant(Box::new(String::new()) as Box<dyn RefArg>)),
            )
            .unwrap();
        (
            session,
            vec![],
            value.as_bytes().to_vec(),
            "text/plain".into(),
        )
    }

    /// A second keyring, `work`, made the default, whose password is kept
    /// in the (unlocked) login keyring: gnome-keyring's "unlock it whenever
    /// I am logged in". Unlocking it goes through a prompt that completes
    /// by itself, with no window: a locked keychain that unlocks when asked.
    pub fn chained_default_keyring(c: &Connection) -> Path<'static> {
        let mut props = PropMap::new();
        props.insert(
            format!("{COLLECTION}.Label"),
            Variant(Box::new("work".to_string()) as Box<dyn RefArg>),
        );
        let (work,): (Path<'static>,) = service(c)
            .method_call(
                "org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface",
                "CreateWithMasterPassword",
                (props, plain_secret(c, "work-pw")),
            )
            .unwrap();
        let login = default_collection(c);
        let attributes: HashMap<String, String> = [
            ("xdg:schema", "org.gnome.keyring.ChainedKeyring"),
            ("keyring", "LOCAL:/keyrings/work.keyring"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut item = PropMap::new();
        item.insert(
            "org.freedesktop.Secret.Item.Label".into(),
            Variant(Box::new("Unlock password for: work".to_string()) as Box<dyn RefArg>),
        );
        item.insert(
            "org.freedesktop.Secret.Item.Attributes".into(),
            Variant(Box::new(attributes) as Box<dyn RefArg>),
        );
        let _: (Path<'static>, Path<'static>) = c
            .with_proxy(DEST, login, Duration::from_secs(5))
            .method_call(
                COLLECTION,
                "CreateItem",
                (item, plain_secret(c, "work-pw"), true),
            )
            .unwrap();
        let () = service(c)
            .method_call(SERVICE, "SetAlias", ("default", work.clone()))
            .unwrap();
        assert_eq!(default_collection(c), work);
        work
    }
}

/// Sessions the server has ever made (revoked ones too).
fn server_sessions(server: &TestServer) -> i64 {
    let db = rusqlite::Connection::open(server.db()).unwrap();
    db.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap()
}

/// A sign-in with `vault` fails at once with `keychain_unavailable`, before
/// the password is sent: the server makes no session. Returns the message.
fn sign_in_fails_before_the_password(vault: KeyringVault) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = TestServer::start(&[]);
        server.add_user("sage", "pw-sage-123");
        let dir = tempfile::tempdir().unwrap();
        let http = TestHttp::new();
        let e = Engine::start(
            test_config(dir.path()),
            Arc::new(vault) as Arc<dyn Vault>,
            Arc::new(http.clone()),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let err = e
            .sign_in(&server.url(), "sage", "pw-sage-123")
            .await
            .expect_err("no keychain to keep the session in");
        let took = started.elapsed();
        println!("sign-in refused after {took:?}: {err}");
        assert_eq!(err.code(), "keychain_unavailable", "{err}");
        // The old way failed at the keychain write, after a D-Bus prompt
        // timeout (25 s and more): now it is said before anything is sent.
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert_eq!(http.count("v1/auth/token"), 0, "the password was sent");
        assert_eq!(server_sessions(&server), 0, "a session was made");
        assert_eq!(e.status().state, SessionState::SignedOut);
        err.to_string()
    })
}

#[test]
fn a_locked_keychain_is_keychain_unavailable() {
    in_keyring_session("inner_locked_keychain", false);
}

#[test]
#[ignore = "runs inside its own D-Bus session, started by the test above"]
fn inner_locked_keychain() {
    assert!(guard());
    // The login keyring exists and is locked; its unlock prompt cannot be
    // shown (no display): gnome-keyring dismisses it.
    let bus = ss::connect();
    let login = ss::default_collection(&bus);
    ss::lock(&bus, &login);
    let vault = KeyringVault::new("latchkey-test").expect("a Secret Service is running");
    let message = sign_in_fails_before_the_password(vault.clone());
    assert!(message.contains("locked"), "{message}");
    assert!(ss::is_locked(&bus, &login));
    // keyring itself refuses to write there too (the old way: late)
    let started = Instant::now();
    let err = vault
        .store("x@y", "secret")
        .expect_err("a locked keychain must refuse");
    println!("a keychain write refused after {:?}", started.elapsed());
    assert_eq!(err.code(), "keychain_unavailable");
}

#[test]
fn a_keychain_with_no_keyring_yet_is_keychain_unavailable() {
    // gnome-keyring started without `--unlock` and no keyring on disk: no
    // default keyring, and making one needs a prompt that cannot be shown.
    in_keyring_session("inner_no_keyring_yet", true);
}

#[test]
#[ignore = "runs inside its own D-Bus session, started by the test above"]
fn inner_no_keyring_yet() {
    assert!(guard());
    let vault = KeyringVault::new("latchkey-test").expect("a Secret Service is running");
    let message = sign_in_fails_before_the_password(vault.clone());
    assert!(message.contains("keyring"), "{message}");
    let err = vault.store("x@y", "secret").expect_err("nowhere to write");
    assert_eq!(err.code(), "keychain_unavailable");
}

#[test]
fn an_unanswered_unlock_prompt_is_given_up_within_the_bound() {
    in_keyring_session("inner_unanswered_unlock_prompt", false);
}

#[test]
#[ignore = "runs inside its own D-Bus session, started by the test above"]
fn inner_unanswered_unlock_prompt() {
    assert!(guard());
    // A prompter that takes the request and never answers: what a prompt
    // nobody answers looks like to the caller (gnome-keyring itself gives
    // up on it only after its 25 s D-Bus timeout).
    let prompter = ss::connect();
    prompter
        .request_name("org.gnome.keyring.SystemPrompter", false, true, true)
        .unwrap();
    let bus = ss::connect();
    let login = ss::default_collection(&bus);
    ss::lock(&bus, &login);
    let vault = KeyringVault::new("latchkey-test")
        .expect("a Secret Service is running")
        .with_unlock_wait(Duration::from_secs(2));
    let started = Instant::now();
    let message = sign_in_fails_before_the_password(vault);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited for the prompt"
    );
    assert!(message.contains("not answered"), "{message}");
    drop(prompter);
}

#[test]
fn a_locked_keychain_that_unlocks_when_asked_signs_in() {
    in_keyring_session("inner_keychain_unlocks_when_asked", false);
}

#[test]
#[ignore = "runs inside its own D-Bus session, started by the test above"]
fn inner_keychain_unlocks_when_asked() {
    assert!(guard());
    let bus = ss::connect();
    let work = ss::chained_default_keyring(&bus);
    ss::lock(&bus, &work);
    let vault = KeyringVault::new("latchkey-test").expect("a Secret Service is running");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = TestServer::start(&[]);
        server.add_user("tal", "pw-tal-123");
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::start(
            test_config(dir.path()),
            Arc::new(vault.clone()) as Arc<dyn Vault>,
            Arc::new(TestHttp::new()),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        e.sign_in(&server.url(), "tal", "pw-tal-123").await.unwrap();
        assert_eq!(e.status().state, SessionState::Online);
        let account = latchkey_client::vault::account_name(&server.url(), "tal");
        assert!(
            vault.load(&account).unwrap().is_some(),
            "kept in the keychain"
        );
        assert_eq!(server_sessions(&server), 1);
    });
    assert!(!ss::is_locked(&bus, &work), "unlocked when asked");
}

#[test]
fn no_secret_service_is_keychain_unavailable_not_a_crash() {
    // No session bus at all: what a bare Linux without a desktop has.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "inner_no_secret_service",
            "--ignored",
            "--nocapture",
        ])
        .env(INNER_ENV, "1")
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/latchkey-test-bus",
        )
        .env_remove("DISPLAY")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "runs without a session bus, started by the test above"]
fn inner_no_secret_service() {
    assert!(guard());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let vault: Arc<dyn Vault> = match KeyringVault::new("latchkey-test") {
            Ok(v) => Arc::new(v),
            Err(e) => {
                assert_eq!(e.code(), "keychain_unavailable");
                return;
            }
        };
        let e = Engine::start(
            Config::new(dir.path()),
            vault,
            Arc::new(TestHttp::new()),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let err = e.sign_in("http://127.0.0.1:9", "a", "b").await.unwrap_err();
        assert_eq!(err.code(), "keychain_unavailable", "{err}");
        assert!(err.to_string().contains("Secret Service") || err.to_string().contains("keychain"));
    });
}
