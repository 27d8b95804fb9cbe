//! `GET /v1/notes/{note_id}/history`: a note's earlier versions (PROTOCOL.md
//! v1.1 "Note history").

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use latchkey_protocol::HistoryResponse;
use uuid::Uuid;

use super::Authed;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/notes/{note_id}/history", get(history))
}

/// 404 for any id the user has no note of. A malformed id is one of them:
/// PROTOCOL.md answers 404 for every id that names no note of the caller
/// (as for `DELETE /v1/auth/sessions/{id}`); 400 is for malformed bodies
/// and queries.
async fn history(
    State(state): State<AppState>,
    authed: Authed,
    note_id: Result<Path<String>, PathRejection>,
) -> AppResult<Json<HistoryResponse>> {
    let note_id = note_id
        .ok()
        .and_then(|Path(id)| Uuid::parse_str(&id).ok())
        .ok_or(AppError::NoteNotFound)?;
    match state
        .store
        .history(&authed.session.user_id, note_id)
        .await?
    {
        Some(versions) => Ok(Json(HistoryResponse { versions })),
        None => Err(AppError::NoteNotFound),
    }
}
