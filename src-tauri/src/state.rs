//! Managed state and the non-secret settings (tauri-plugin-store), saved
//! the moment they change: the app may be killed at any time.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use latchkey_client::Engine;
use serde::Serialize;
use tauri::{AppHandle, Runtime};
use tauri_plugin_store::StoreExt as _;

/// The store file of the settings (no secrets in it, ever).
pub const SETTINGS: &str = "settings.json";
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8787";

/// The engine, handed to Tauri as managed state, and the export running.
pub struct AppState {
    pub engine: Engine,
    /// An export is running (one at a time).
    pub exporting: AtomicBool,
    /// The running export's cancel flag.
    pub export_cancel: Mutex<Option<Arc<AtomicBool>>>,
}

impl AppState {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            exporting: AtomicBool::new(false),
            export_cancel: Mutex::new(None),
        }
    }
}

/// Locks `m`, also after a panic elsewhere (the flag inside stays usable).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the UI may know of the settings.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub server_url: String,
    pub last_user: Option<String>,
    pub work_offline: bool,
}

pub fn read_settings<R: Runtime>(app: &AppHandle<R>) -> Settings {
    let store = app.store(SETTINGS).ok();
    let get = |key: &str| store.as_ref().and_then(|s| s.get(key));
    Settings {
        server_url: get("server_url")
            .and_then(|v| v.as_str().map(str::to_owned))
            .or_else(|| std::env::var("LATCHKEY_SERVER_URL").ok())
            .unwrap_or_else(|| DEFAULT_SERVER.into()),
        last_user: get("last_user").and_then(|v| v.as_str().map(str::to_owned)),
        work_offline: get("work_offline")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    }
}

/// Sets one setting and writes the file at once.
pub fn save_setting<R: Runtime>(app: &AppHandle<R>, key: &str, value: serde_json::Value) {
    match app.store(SETTINGS) {
        Ok(store) => {
            store.set(key, value);
            if let Err(e) = store.save() {
                tracing::warn!(error = %e, "could not save settings");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not open settings"),
    }
}
