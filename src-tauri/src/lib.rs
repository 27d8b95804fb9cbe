//! latchkey-app: the Tauri shell. Builds the engine, hands it to Tauri as
//! managed state, maps commands to engine calls, and forwards every status
//! change to the UI as one `status` event carrying the whole snapshot.

mod commands;
mod error;
mod state;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use latchkey_client::vault::UNLOCK_PROMPT_WAIT;
use latchkey_client::{Config, Engine, ReqwestHttp, SystemClock, Vault, system_vault};
use tauri::{AppHandle, Builder, Emitter as _, Manager as _, Runtime};
use tauri_plugin_window_state::StateFlags;

pub use error::Error;
pub use state::AppState;

/// When `run()` began: the start-up time logged once by `list_notes`
/// (scripts/bench-app.sh measures cold start from it).
pub(crate) static START: OnceLock<Instant> = OnceLock::new();

/// The keychain service the sessions are kept under.
pub const KEYCHAIN_SERVICE: &str = "latchkey";

/// The engine's settings: defaults, then the environment
/// (`LATCHKEY_OFFLINE_GRACE`, a duration: `7d`, `36h`, or bare seconds).
fn engine_config(data_dir: std::path::PathBuf, work_offline: bool) -> Config {
    let mut config = Config::new(data_dir);
    config.work_offline = work_offline;
    if let Some(grace) = env_duration("LATCHKEY_OFFLINE_GRACE") {
        config.offline_grace = grace;
    }
    config
}

/// A duration from the environment: humantime (`30s`, `15m`, `7d`) like the
/// server's flags, or a bare number of seconds. Unset: none; unreadable: a
/// warning naming the variable, and none (the default stands).
fn env_duration(name: &str) -> Option<Duration> {
    let value = std::env::var(name).ok()?;
    let parsed = parse_duration(&value);
    if parsed.is_none() {
        tracing::warn!(
            variable = name,
            value = %value,
            "not a duration (try 30s, 15m, 7d or a number of seconds); the default is used"
        );
    }
    parsed
}

fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(value).ok(),
    }
}

/// The app's builder, generic over the runtime so tests can use a mock.
pub fn build<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    // First: a second launch focuses the first instead of racing it on
    // refresh-token rotation.
    let builder = builder.plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
        if let Some(w) = app.get_webview_window("main") {
            let _ = w.unminimize();
            let _ = w.show();
            let _ = w.set_focus();
        }
    }));
    with_commands(builder)
        // The window's size and place, kept across launches.
        .plugin(
            tauri_plugin_window_state::Builder::default()
                .with_state_flags(StateFlags::SIZE | StateFlags::POSITION | StateFlags::MAXIMIZED)
                .build(),
        )
        .setup(|app| {
            let unlock_wait =
                env_duration("LATCHKEY_KEYCHAIN_PROMPT_WAIT").unwrap_or(UNLOCK_PROMPT_WAIT);
            let vault = tauri::async_runtime::block_on(async {
                tokio::task::spawn_blocking(move || system_vault(KEYCHAIN_SERVICE, unlock_wait))
                    .await
            })?;
            manage_engine(app.handle(), vault)?;
            Ok(())
        })
}

/// The commands the UI calls and what they need besides the engine (the
/// settings store, the export's folder picker, opened from Rust only).
/// [`build`] adds the rest of the app; the commands' tests add an engine of
/// their own with [`manage_engine`].
fn with_commands<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    builder
        .plugin(tauri_plugin_store::Builder::default().build())
        .plugin(tauri_plugin_dialog::init())
        .invoke_handler(tauri::generate_handler![
            commands::status,
            commands::settings,
            commands::sign_in,
            commands::sign_out,
            commands::list_notes,
            commands::get_note,
            commands::save_note,
            commands::delete_note,
            commands::sync_now,
            commands::set_work_offline,
            commands::library::search_notes,
            commands::library::list_trash,
            commands::library::restore_from_trash,
            commands::library::empty_trash,
            commands::library::note_history,
            commands::library::export_all,
            commands::library::cancel_export,
            commands::account::device_name,
            commands::account::set_device_name,
            commands::account::switch_account,
            commands::account::list_sessions,
            commands::account::revoke_session,
            commands::account::revoke_other_sessions,
            commands::account::change_password,
        ])
}

/// Starts the engine on `vault`, in the app's data folder and with the
/// saved settings, hands it to Tauri as managed state, and forwards every
/// status change to the window.
fn manage_engine<R: Runtime>(
    app: &AppHandle<R>,
    vault: Arc<dyn Vault>,
) -> Result<(), Box<dyn std::error::Error>> {
    let settings = state::read_settings(app);
    let data_dir = app.path().app_data_dir()?.join("engine");
    let http = Arc::new(ReqwestHttp::new(Duration::from_secs(3))?);
    let config = engine_config(data_dir, settings.work_offline);
    let engine =
        tauri::async_runtime::block_on(Engine::start(config, vault, http, Arc::new(SystemClock)))?;
    let mut rx = engine.subscribe();
    app.manage(AppState::new(engine));
    let handle = app.clone();
    tauri::async_runtime::spawn(async move {
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if let Err(e) = handle.emit("status", snapshot) {
                tracing::warn!(error = %e, "could not send the status to the window");
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Runs the app.
pub fn run() {
    START.get_or_init(Instant::now);
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if let Err(e) = build(tauri::Builder::default()).run(tauri::generate_context!()) {
        eprintln!("error: Latchkey could not start: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_humantime_or_bare_seconds() {
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("36h"), Some(Duration::from_secs(36 * 3_600)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 2m "), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-5"), None);
        assert_eq!(parse_duration(""), None);
    }
}
