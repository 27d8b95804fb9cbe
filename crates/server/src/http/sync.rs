//! Push and pull of notes.

use axum::extract::{RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use latchkey_protocol::sync::{DEFAULT_PULL_LIMIT, MAX_PULL_LIMIT, MAX_PUSH_BYTES};
use latchkey_protocol::{PullResponse, PushRequest, PushResponse};

use super::Authed;
use super::extract::JsonBody;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::store::PullOutcome;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sync/push", post(push))
        .route("/v1/sync/pull", get(pull))
}

async fn push(
    State(state): State<AppState>,
    authed: Authed,
    JsonBody(req): JsonBody<PushRequest, MAX_PUSH_BYTES>,
) -> AppResult<Json<PushResponse>> {
    req.validate().map_err(AppError::InvalidRequest)?;
    let user_id = &authed.session.user_id;
    let answer = state
        .store
        .push(user_id, req.ops, crate::clock::now())
        .await?;
    // Committed: the user's live streams learn of it now, not at the poll.
    state.live.rev_advanced(user_id, answer.cursor);
    Ok(Json(answer))
}

async fn pull(
    State(state): State<AppState>,
    authed: Authed,
    RawQuery(query): RawQuery,
) -> AppResult<Json<PullResponse>> {
    let mut since = 0i64;
    let mut limit = DEFAULT_PULL_LIMIT;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "since" => {
                since = v.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(|| {
                    AppError::InvalidRequest("since must be a non-negative integer".into())
                })?;
            }
            "limit" => {
                let n = v.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    AppError::InvalidRequest("limit must be a positive integer".into())
                })?;
                limit = n.min(u64::from(MAX_PULL_LIMIT)) as u32;
            }
            _ => {}
        }
    }
    match state
        .store
        .pull(&authed.session.user_id, since, limit)
        .await?
    {
        PullOutcome::Page(page) => Ok(Json(page)),
        PullOutcome::CursorAhead { latest } => Err(AppError::CursorAhead { since, latest }),
    }
}
