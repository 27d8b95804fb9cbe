//! The commands as the UI calls them: through Tauri's IPC on the mock
//! runtime, on an engine with an in-memory keychain and folders of the
//! test's own, against a real server. They check what a person at the
//! window would notice (who is signed in, the list, the errors, a switch
//! that stays on), and that no token or password ever comes back.

use std::path::Path;
use std::sync::Arc;

use latchkey_client::{ExposeSecret, VaultEntry};
use latchkey_testkit::{MemoryVault, PW, TestServer, free_port};
use serde_json::{Value, json};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    INVOKE_KEY, MockRuntime, get_ipc_response, mock_builder, mock_context, noop_assets,
};
use tauri::utils::config::AppDirectoriesOverride;
use tauri::webview::InvokeRequest;
use tauri::{App, WebviewUrl, WebviewWindow, WebviewWindowBuilder};

/// The app on the mock runtime: the commands, the settings store and an
/// engine, its folders under `dir`, its keychain `vault`.
struct MockApp {
    _app: App<MockRuntime>,
    window: WebviewWindow<MockRuntime>,
}

impl MockApp {
    fn launch(dir: &Path, vault: &MemoryVault) -> Self {
        let mut context = mock_context(noop_assets());
        context.config_mut().app.app_directories_override =
            Some(AppDirectoriesOverride::Root(dir.to_path_buf()));
        let app = crate::with_commands(mock_builder())
            .build(context)
            .expect("the app builds");
        crate::manage_engine(app.handle(), Arc::new(vault.clone())).expect("the engine starts");
        let window = WebviewWindowBuilder::new(&app, "main", WebviewUrl::default())
            .build()
            .expect("the window opens");
        MockApp { _app: app, window }
    }

    /// Calls `cmd` with `args` as the UI does; its reply, or its error.
    fn invoke(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        let url = if cfg!(windows) {
            "http://tauri.localhost"
        } else {
            "tauri://localhost"
        };
        let request = InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: url.parse().expect("a URL"),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.into(),
        };
        get_ipc_response(&self.window, request)
            .map(|reply| reply.deserialize().expect("a JSON reply"))
    }

    fn ok(&self, cmd: &str, args: Value) -> Value {
        self.invoke(cmd, args)
            .unwrap_or_else(|e| panic!("{cmd} failed: {e}"))
    }

    fn err(&self, cmd: &str, args: Value) -> Value {
        match self.invoke(cmd, args) {
            Ok(reply) => panic!("{cmd} succeeded: {reply}"),
            Err(e) => e,
        }
    }
}

/// A server with the user `ann`, and the app signed in to it.
struct SignedIn {
    server: TestServer,
    vault: MemoryVault,
    dir: tempfile::TempDir,
    app: MockApp,
    reply: Value,
}

fn signed_in() -> SignedIn {
    let server = TestServer::start(&[]);
    server.add_user("ann", PW);
    let (dir, vault) = (tempfile::tempdir().expect("a folder"), MemoryVault::new());
    let app = MockApp::launch(dir.path(), &vault);
    let reply = app.ok(
        "sign_in",
        json!({"serverUrl": server.url(), "username": "ann", "password": PW}),
    );
    SignedIn {
        server,
        vault,
        dir,
        app,
        reply,
    }
}

#[test]
fn sign_in_names_the_user_and_returns_no_secret() {
    let s = signed_in();
    assert_eq!(s.reply["state"], "online", "{}", s.reply);
    assert_eq!(s.reply["user"]["username"], "ann");
    assert_eq!(s.reply["server"], s.server.url());
    let account = s.vault.accounts().pop().expect("a keychain entry");
    let entry = VaultEntry::from_json(&s.vault.raw(&account).expect("stored")).expect("valid");
    let text = s.reply.to_string();
    for secret in [
        PW,
        entry.access_token.expose_secret(),
        entry.refresh_token.expose_secret(),
    ] {
        assert!(!text.contains(secret), "a secret in the reply: {text}");
    }
    // The settings remember the server and the user, and nothing secret.
    let settings = s.app.ok("settings", json!({}));
    assert_eq!(settings["server_url"], s.server.url());
    assert_eq!(settings["last_user"], "ann");
    let file = std::fs::read_to_string(s.dir.path().join(crate::state::SETTINGS))
        .expect("the settings file");
    assert!(!file.contains(PW) && !file.contains(entry.refresh_token.expose_secret()));
}

#[test]
fn a_saved_note_is_listed_with_a_preview_of_120_characters() {
    let s = signed_in();
    let body = "ünïcødé text, ".repeat(20);
    let note = s.app.ok(
        "save_note",
        json!({"id": null, "version": null, "title": "Groceries", "body": body}),
    );
    let list = s.app.ok("list_notes", json!({}));
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], note["id"]);
    assert_eq!(list[0]["title"], "Groceries");
    let preview = list[0]["preview"].as_str().expect("a preview");
    assert_eq!(preview.chars().count(), 120);
    assert!(body.starts_with(preview));
    // The note itself is whole.
    let got = s.app.ok("get_note", json!({"id": note["id"]}));
    assert_eq!(got["body"], body.as_str());
}

#[test]
fn a_bad_note_id_is_invalid_input() {
    let s = signed_in();
    for cmd in ["get_note", "delete_note"] {
        let e = s.app.err(cmd, json!({"id": "not-a-note-id"}));
        assert_eq!(e["code"], "invalid_input", "{cmd}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let e = s.app.err(
        "save_note",
        json!({"id": "nope", "version": 1, "title": "t", "body": "b"}),
    );
    assert_eq!(e["code"], "invalid_input", "{e}");
}

#[test]
fn signing_in_to_a_dead_server_is_a_network_error() {
    let (dir, vault) = (tempfile::tempdir().expect("a folder"), MemoryVault::new());
    let app = MockApp::launch(dir.path(), &vault);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let e = app.err(
        "sign_in",
        json!({"serverUrl": dead, "username": "ann", "password": PW}),
    );
    assert_eq!(e["code"], "network", "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(!e.to_string().contains(PW), "{e}");
    assert_eq!(app.ok("status", json!({}))["state"], "signed_out");
    assert!(vault.accounts().is_empty());
}

#[test]
fn work_offline_shows_in_the_status_and_outlasts_a_restart() {
    let s = signed_in();
    let status = s.app.ok("set_work_offline", json!({"on": true}));
    assert_eq!(status["work_offline"], true, "{status}");
    assert_eq!(s.app.ok("status", json!({}))["work_offline"], true);
    assert_eq!(s.app.ok("settings", json!({}))["work_offline"], true);
    // Quit and start again: still working offline, still signed in. (The
    // first engine lives on in this process, held by its status
    // forwarder; working offline, it sends nothing meanwhile.)
    drop(s.app);
    let app = MockApp::launch(s.dir.path(), &s.vault);
    let status = app.ok("status", json!({}));
    assert_eq!(status["work_offline"], true, "{status}");
    assert_eq!(status["state"], "offline", "{status}");
    assert_eq!(status["user"]["username"], "ann");
}

#[test]
fn search_narrows_the_list_and_a_deleted_note_comes_back_from_the_trash() {
    let s = signed_in();
    let save = |title: &str, body: &str| {
        s.app.ok(
            "save_note",
            json!({"id": null, "version": null, "title": title, "body": body}),
        )
    };
    let groceries = save("Groceries", &"apples and pears, ".repeat(20));
    save("Trip", "pack the tent");
    let found = s.app.ok("search_notes", json!({"query": "pea"}));
    let found = found.as_array().expect("a list");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["title"], "Groceries");
    assert_eq!(
        found[0]["preview"].as_str().map(|p| p.chars().count()),
        Some(120)
    );

    s.app.ok("delete_note", json!({"id": groceries["id"]}));
    assert_eq!(s.app.ok("search_notes", json!({"query": "pea"})), json!([]));
    let trash = s.app.ok("list_trash", json!({}));
    assert_eq!(trash[0]["title"], "Groceries", "{trash}");
    assert!(trash[0]["deleted_at"].as_i64().is_some());
    let back = s
        .app
        .ok("restore_from_trash", json!({"id": groceries["id"]}));
    assert_eq!(back["id"], groceries["id"]);
    assert_eq!(s.app.ok("list_trash", json!({})), json!([]));
    assert_eq!(
        s.app.ok("list_notes", json!({})).as_array().map(Vec::len),
        Some(2)
    );
    let e = s
        .app
        .err("restore_from_trash", json!({"id": groceries["id"]}));
    assert_eq!(e["code"], "note_not_found", "{e}");
}

#[test]
fn history_offline_says_it_needs_the_server() {
    let s = signed_in();
    let note = s.app.ok(
        "save_note",
        json!({"id": null, "version": null, "title": "Plan", "body": "one"}),
    );
    s.app.ok("set_work_offline", json!({"on": true}));
    let e = s.app.err("note_history", json!({"id": note["id"]}));
    assert_eq!(e["code"], "offline", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("needs the server"))
    );
}

#[test]
fn the_account_commands_show_devices_and_accounts_and_never_a_secret() {
    let s = signed_in();
    s.server.add_user("bob", PW);
    let name = s
        .app
        .ok("set_device_name", json!({"name": "  Study desk "}));
    assert_eq!(name, "Study desk");
    assert_eq!(s.app.ok("device_name", json!({})), "Study desk");
    let e = s
        .app
        .err("set_device_name", json!({"name": "x".repeat(65)}));
    assert_eq!(e["code"], "invalid_input", "{e}");

    // The device list: this device only, no token in it.
    let sessions = s.app.ok("list_sessions", json!({}));
    let sessions = sessions.as_array().expect("a list");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["current"], true);
    let account = s.vault.accounts().pop().expect("a keychain entry");
    let entry = VaultEntry::from_json(&s.vault.raw(&account).expect("stored")).expect("valid");
    let e = s.app.err(
        "revoke_session",
        json!({"sessionId": entry.session_id.clone()}),
    );
    assert_eq!(
        e["code"], "invalid_input",
        "this device signs out with Sign out: {e}"
    );

    // A wrong current password is its own code, and the session stays.
    let e = s.app.err(
        "change_password",
        json!({"current": "not it", "new": "a long new password"}),
    );
    assert_eq!(e["code"], "wrong_password", "{e}");
    assert!(!e.to_string().contains("a long new password"), "{e}");
    assert_eq!(s.app.ok("status", json!({}))["state"], "online");

    // A second account, and the switch back: both listed, one active.
    s.app.ok(
        "sign_in",
        json!({"serverUrl": s.server.url(), "username": "bob", "password": PW}),
    );
    let status = s.app.ok(
        "switch_account",
        json!({"server": s.server.url(), "username": "ann"}),
    );
    assert_eq!(status["user"]["username"], "ann", "{status}");
    let accounts: Vec<(String, bool)> = status["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| {
            (
                a["username"].as_str().unwrap_or("").to_owned(),
                a["active"] == true,
            )
        })
        .collect();
    assert_eq!(
        accounts,
        [("ann".to_owned(), true), ("bob".to_owned(), false)]
    );
    let text = format!("{status}{sessions:?}");
    for secret in [
        PW,
        entry.access_token.expose_secret(),
        entry.refresh_token.expose_secret(),
    ] {
        assert!(!text.contains(secret), "a secret in a reply: {text}");
    }
}
