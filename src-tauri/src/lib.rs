//! latchkey-app: the Tauri shell. Builds the engine, hands it to Tauri as
//! managed state, maps commands to engine calls, and forwards every status
//! change to the UI as one `status` event carrying the whole snapshot.

mod commands;
mod error;
mod state;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use latchkey_client::vault::UNLOCK_PROMPT_WAIT;
use latchkey_client::{Config, Engine, ReqwestHttp, SystemClock, system_vault};
use tauri::{Builder, Emitter as _, Manager as _, Runtime, WindowEvent};

pub use error::Error;
pub use state::AppState;

/// When `run()` began: the start-up time logged once by `list_notes`
/// (scripts/bench-app.sh measures cold start from it).
pub(crate) static START: OnceLock<Instant> = OnceLock::new();

/// The keychain service the sessions are kept under.
pub const KEYCHAIN_SERVICE: &str = "latchkey";

/// The engine's settings: defaults, then the environment
/// (`LATCHKEY_OFFLINE_GRACE` in seconds).
fn engine_config(data_dir: std::path::PathBuf, work_offline: bool) -> Config {
    let mut config = Config::new(data_dir);
    config.work_offline = work_offline;
    if let Some(secs) = env_secs("LATCHKEY_OFFLINE_GRACE") {
        config.offline_grace = Duration::from_secs(secs);
    }
    config
}

/// A number of seconds from the environment (unset or not a number: none).
fn env_secs(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// The app's builder, generic over the runtime so tests can use a mock.
pub fn build<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    builder
        // First: a second launch focuses the first instead of racing it on
        // refresh-token rotation.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            if let Some(w) = app.get_webview_window("main") {
                let _ = w.unminimize();
                let _ = w.show();
                let _ = w.set_focus();
            }
        }))
        .plugin(tauri_plugin_store::Builder::default().build())
        .setup(|app| {
            let handle = app.handle().clone();
            let settings = state::read_settings(&handle);
            let data_dir = app.path().app_data_dir()?.join("engine");
            let http = Arc::new(ReqwestHttp::new(Duration::from_secs(3))?);
            let unlock_wait = env_secs("LATCHKEY_KEYCHAIN_PROMPT_WAIT")
                .map_or(UNLOCK_PROMPT_WAIT, Duration::from_secs);
            let vault = tauri::async_runtime::block_on(async {
                tokio::task::spawn_blocking(move || system_vault(KEYCHAIN_SERVICE, unlock_wait))
                    .await
            })?;
            let config = engine_config(data_dir, settings.work_offline);
            let engine = tauri::async_runtime::block_on(Engine::start(
                config,
                vault,
                http,
                Arc::new(SystemClock),
            ))?;
            let mut rx = engine.subscribe();
            app.manage(AppState { engine });
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
            if let (Some(window), Some(size)) = (
                app.get_webview_window("main"),
                state::saved_window_size(app.handle()),
            ) {
                let _ = window.set_size(tauri::LogicalSize::new(size.0, size.1));
            }
            Ok(())
        })
        .on_window_event(|window, event| {
            if let WindowEvent::Resized(size) = event
                && size.width > 0
                && size.height > 0
            {
                let scale = window.scale_factor().unwrap_or(1.0);
                let logical = size.to_logical::<f64>(scale);
                state::save_window_size(
                    window.app_handle(),
                    logical.width as u32,
                    logical.height as u32,
                );
            }
        })
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
        ])
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
