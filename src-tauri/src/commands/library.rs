//! The commands of the notes library beyond editing: search, the trash, a
//! note's history, and "Export all notes" (its folder picked in the system
//! dialog, opened from here: the window itself is granted no dialog or
//! file-system permission at all).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use latchkey_client::{ExportReport, NoteVersion};
use serde::Serialize;
use tauri::{AppHandle, Emitter as _, Runtime, State};
use tauri_plugin_dialog::DialogExt as _;

use super::{NoteSummary, parse_id, preview};
use crate::error::{Error, Result};
use crate::state::AppState;

/// Export goes to this folder without asking (scripted and managed set-ups).
pub const EXPORT_DIR_ENV: &str = "LATCHKEY_EXPORT_DIR";
/// The window hears of an export's progress at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A note in the trash, as the trash view lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TrashSummary {
    pub id: uuid::Uuid,
    pub title: String,
    pub preview: String,
    pub conflict_of: Option<uuid::Uuid>,
    pub deleted_at: i64,
}

/// How far an export is, sent as the `export-progress` event.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ExportProgress {
    pub done: usize,
    pub total: usize,
}

#[tauri::command]
pub async fn search_notes(state: State<'_, AppState>, query: String) -> Result<Vec<NoteSummary>> {
    let notes = state.engine.search_notes(query).await?;
    Ok(notes.into_iter().map(NoteSummary::from).collect())
}

#[tauri::command]
pub async fn list_trash(state: State<'_, AppState>) -> Result<Vec<TrashSummary>> {
    let trash = state.engine.list_trash().await?;
    Ok(trash
        .into_iter()
        .map(|t| TrashSummary {
            id: t.id,
            preview: preview(&t.body),
            title: t.title,
            conflict_of: t.conflict_of,
            deleted_at: t.deleted_at,
        })
        .collect())
}

#[tauri::command]
pub async fn restore_from_trash(
    state: State<'_, AppState>,
    id: String,
) -> Result<latchkey_client::Note> {
    Ok(state.engine.restore_from_trash(parse_id(&id)?).await?)
}

#[tauri::command]
pub async fn empty_trash(state: State<'_, AppState>) -> Result<usize> {
    Ok(state.engine.empty_trash().await?)
}

#[tauri::command]
pub async fn note_history(state: State<'_, AppState>, id: String) -> Result<Vec<NoteVersion>> {
    Ok(state.engine.note_history(parse_id(&id)?).await?)
}

/// Asks for a folder (unless [`EXPORT_DIR_ENV`] names one) and writes every
/// note there, telling the window how far it is. `None`: the user closed
/// the dialog without picking a folder.
#[tauri::command]
pub async fn export_all<R: Runtime>(
    app: AppHandle<R>,
    state: State<'_, AppState>,
) -> Result<Option<ExportReport>> {
    if state.exporting.swap(true, Ordering::SeqCst) {
        return Err(Error::new("export", "an export is already running"));
    }
    let _running = Running(&state.exporting);
    let Some(folder) = pick_folder(&app).await? else {
        return Ok(None);
    };
    let cancel = Arc::new(AtomicBool::new(false));
    *crate::state::lock(&state.export_cancel) = Some(cancel.clone());
    let mut last = Instant::now() - PROGRESS_EVERY;
    let window = app.clone();
    let progress = move |done: usize, total: usize| {
        if done == total || last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            let _ = window.emit("export-progress", ExportProgress { done, total });
        }
    };
    let report = state.engine.export_all(folder, progress, cancel).await;
    *crate::state::lock(&state.export_cancel) = None;
    Ok(Some(report?))
}

/// Stops the running export after the file it is writing.
#[tauri::command]
pub async fn cancel_export(state: State<'_, AppState>) -> Result<()> {
    if let Some(cancel) = crate::state::lock(&state.export_cancel).as_ref() {
        cancel.store(true, Ordering::SeqCst);
    }
    Ok(())
}

/// Clears the "an export is running" flag however the export ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

async fn pick_folder<R: Runtime>(app: &AppHandle<R>) -> Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os(EXPORT_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(Some(PathBuf::from(dir)));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.dialog()
        .file()
        .set_title("Export all notes into…")
        .pick_folder(move |picked| {
            let _ = tx.send(picked);
        });
    let picked = rx
        .await
        .map_err(|_| Error::new("export", "the folder dialog closed unexpectedly"))?;
    picked
        .map(|p| {
            p.into_path()
                .map_err(|e| Error::new("export", format!("that folder cannot be used: {e}")))
        })
        .transpose()
}
