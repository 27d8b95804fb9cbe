//! The real OS keychain: a Secret Service (gnome-keyring) in a D-Bus session
//! of the test's own. Each outer test re-runs one inner test of this binary
//! inside `dbus-run-session`, with a keyring daemon and data folders of its
//! own, and asserts it passed; the inner tests are `#[ignore]`d so they only
//! ever run there.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use latchkey_client::{Config, Engine, KeyringVault, SessionState, SystemClock, Vault};

const INNER_ENV: &str = "LATCHKEY_KEYCHAIN_SESSION";

/// Runs `inner` of this test binary in a fresh D-Bus session with
/// gnome-keyring (unlocked unless `locked`), and returns its output.
fn in_keyring_session(inner: &str, locked: bool) -> std::process::Output {
    in_keyring_session_with(inner, locked, &[])
}

/// The same, with more arguments for `dbus-run-session`.
fn in_keyring_session_with(inner: &str, locked: bool, bus_args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let unlock = if locked {
        "eval \"$(gnome-keyring-daemon --start --components=secrets)\""
    } else {
        "eval \"$(printf %s latchkey-test | gnome-keyring-daemon --unlock --components=secrets)\""
    };
    let script = format!(
        "{unlock} >/dev/null; exec \"$0\" --exact {inner} --ignored --nocapture --test-threads 1"
    );
    let out = Command::new("dbus-run-session")
        .args(bus_args)
        .args(["--", "sh", "-c", &script])
        .arg(std::env::current_exe().unwrap())
        .env(INNER_ENV, "1")
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .env("XDG_RUNTIME_DIR", home.path())
        .env_remove("DISPLAY")
        .output()
        .expect("dbus-run-session (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "inner test {inner} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
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
        e.save_note(None, "kept".into(), "offline".into())
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
                !contains(&bytes, &entry.refresh_token),
                "refresh token in clear under {root:?}"
            );
            assert!(
                !contains(&bytes, &entry.access_token[..60]),
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
            signal(pid, "KILL");
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
        e.save_note(None, "before".into(), "the keychain went".into())
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
        e.save_note(None, "after".into(), "still saved".into())
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

#[test]
fn a_locked_keychain_is_keychain_unavailable() {
    in_keyring_session("inner_locked_keychain", true);
}

#[test]
#[ignore = "runs inside its own D-Bus session, started by the test above"]
fn inner_locked_keychain() {
    assert!(guard());
    let err = KeyringVault::new("latchkey-test").and_then(|v| v.store("x@y", "secret"));
    let err = err.expect_err("a locked keychain must refuse");
    assert_eq!(err.code(), "keychain_unavailable");
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
