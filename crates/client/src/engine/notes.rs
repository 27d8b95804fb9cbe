//! What the app does with notes beyond editing them: search, the trash,
//! a note's history on the server, export, and the upkeep of the local
//! store (trash expiry, the search index of an older database) after it
//! opens. Everything but history works offline.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use latchkey_protocol::NoteVersion;
use uuid::Uuid;

use super::Engine;
use super::blocking::{blocking, lock};
use super::report::Reporter;
use super::session::Session;
use crate::api;
use crate::error::Result;
use crate::export::{ExportReport, export_notes};
use crate::store::{Note, TrashedNote};

/// A search lists at most this many notes (most recently edited first).
pub const SEARCH_LIMIT: usize = 500;
/// Notes indexed per transaction while an older database's search index is
/// built: a few milliseconds each, so saves are never held up for long.
pub const INDEX_BATCH: i64 = 500;

impl Engine {
    /// Live notes holding every word of `query`, each as a word or the
    /// start of one, most recently edited first; at most [`SEARCH_LIMIT`].
    /// An empty query finds nothing (show the whole list instead).
    pub async fn search_notes(&self, query: String) -> Result<Vec<Note>> {
        let store = self.session.notes_store()?;
        blocking(move || lock(&store).search_notes(&query, SEARCH_LIMIT)).await
    }

    /// The trash, most recently deleted first.
    pub async fn list_trash(&self) -> Result<Vec<TrashedNote>> {
        let store = self.session.notes_store()?;
        blocking(move || lock(&store).list_trash()).await
    }

    /// Brings a note back from the trash, on every device once synced.
    pub async fn restore_from_trash(&self, id: Uuid) -> Result<Note> {
        self.edit(move |store, now| store.restore_from_trash(id, now))
            .await
    }

    /// Removes every note from this device's trash; returns how many.
    pub async fn empty_trash(&self) -> Result<usize> {
        let store = self.session.notes_store()?;
        blocking(move || lock(&store).empty_trash()).await
    }

    /// The earlier versions of a note the server keeps, newest first. Needs
    /// the server: offline this is [`Error::Offline`] at once. Restoring one
    /// is an ordinary save of its text on the note's current version.
    pub async fn note_history(&self, id: Uuid) -> Result<Vec<NoteVersion>> {
        let store = self.session.notes_store()?;
        let of = self.reachable("a note's history")?;
        // A note the server never saw has no history yet.
        if blocking(move || lock(&store).get_note(id)).await?.rev == 0 {
            return Ok(Vec::new());
        }
        let (http, t) = (self.http.clone(), self.timeouts);
        let history = self
            .session
            .authed(&of, |token| {
                let (http, server) = (http.clone(), of.server.clone());
                async move { api::history(http.as_ref(), &server, &token, id, t).await }
            })
            .await?;
        Ok(history.versions)
    }

    /// "Export all notes": one Markdown file per live note (conflict copies
    /// included) into `folder`, on the blocking pool; `progress(done,
    /// total)` after each file, `cancel` checked between files (see
    /// [`export_notes`]). Works offline.
    pub async fn export_all(
        &self,
        folder: PathBuf,
        progress: impl FnMut(usize, usize) + Send + 'static,
        cancel: Arc<AtomicBool>,
    ) -> Result<ExportReport> {
        let store = self.session.notes_store()?;
        blocking(move || {
            let notes = lock(&store).list_notes()?;
            export_notes(&notes, &folder, progress, &cancel)
        })
        .await
    }
}

/// After the store opens: old trash goes, and the search index of notes
/// stored before search existed is built a batch at a time, its progress in
/// the status. Runs in the background; a failure is logged, and the next
/// start tries again.
pub(crate) fn tidy_store(session: Arc<Session>, reporter: Arc<Reporter>) {
    tokio::spawn(async move {
        let Ok(of) = session.active() else {
            return;
        };
        let now = session.now();
        let s = of.store.clone();
        if let Err(e) = blocking(move || lock(&s).expire_trash(now)).await {
            tracing::warn!(error = %e, "emptying old notes from the trash failed");
        }
        loop {
            // Another account is shown now: its own upkeep runs; this
            // index goes on when its account is active again.
            if !session.is_active(&of) {
                return;
            }
            let s = of.store.clone();
            match blocking(move || lock(&s).index_step(INDEX_BATCH)).await {
                Ok(p) if p.complete() => {
                    if reporter.status().search_index.is_some() {
                        reporter.set_indexing(None);
                        session.publish();
                    }
                    return;
                }
                Ok(p) => {
                    reporter.set_indexing(Some(p));
                    session.publish();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "building the search index failed");
                    reporter.set_indexing(None);
                    return;
                }
            }
        }
    });
}
