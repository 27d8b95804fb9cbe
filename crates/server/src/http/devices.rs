//! The user's devices: the list of their live sessions, and ending one or
//! all the others (PROTOCOL.md v1.1 "Devices and sessions").

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use latchkey_protocol::{Reason, RevokedCount, SessionSummary, SessionsResponse};

use super::Authed;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/sessions", get(list))
        .route("/v1/auth/sessions/{session_id}", delete(end_one))
        .route("/v1/auth/sessions/revoke-others", post(end_others))
}

async fn list(State(state): State<AppState>, authed: Authed) -> AppResult<Json<SessionsResponse>> {
    let now = crate::clock::now();
    let sessions = state
        .store
        .live_sessions(&authed.session.user_id, now)
        .await?
        .into_iter()
        .map(|s| SessionSummary {
            current: s.id == authed.session.id,
            session_id: s.id,
            device_name: s.device_name,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
        })
        .collect();
    Ok(Json(SessionsResponse { sessions }))
}

/// 404 for every id that names no live session of the caller (unknown,
/// ended, another user's, malformed), so nobody learns of others' sessions.
async fn end_one(
    State(state): State<AppState>,
    authed: Authed,
    session_id: Result<Path<String>, PathRejection>,
) -> AppResult<StatusCode> {
    let Ok(Path(session_id)) = session_id else {
        return Err(AppError::SessionNotFound);
    };
    let now = crate::clock::now();
    if !state
        .store
        .revoke_own_session(&authed.session.user_id, &session_id, now)
        .await?
    {
        return Err(AppError::SessionNotFound);
    }
    state
        .sessions
        .mark_revoked(&session_id, Reason::Revoked, now);
    Ok(StatusCode::NO_CONTENT)
}

async fn end_others(
    State(state): State<AppState>,
    authed: Authed,
) -> AppResult<Json<RevokedCount>> {
    let now = crate::clock::now();
    let revoked = state
        .store
        .revoke_other_sessions(&authed.session.user_id, &authed.session.id, now)
        .await?;
    Ok(Json(mark_all_revoked(&state, &revoked, now)))
}

/// Applies revocations just made in the store to every later request and
/// live stream here; their count, for the answer.
pub fn mark_all_revoked(state: &AppState, sids: &[String], now: i64) -> RevokedCount {
    for sid in sids {
        state.sessions.mark_revoked(sid, Reason::Revoked, now);
    }
    RevokedCount {
        revoked: sids.len() as u64,
    }
}
