//! `POST /v1/account/password`: the signed-in user changes their password,
//! which ends every other session of theirs (PROTOCOL.md v1.1 "Devices and
//! sessions").

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use latchkey_protocol::{
    ExposeSecret as _, PasswordChange, Reason, RevokedCount, password_length_problem,
};

use super::Authed;
use super::devices::mark_all_revoked;
use super::extract::{ClientIp, JsonBody};
use super::tokens::check_password;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Two passwords of at most 1024 bytes each, JSON-escaped, and the keys.
const PASSWORD_CHANGE_LIMIT: usize = 16 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/account/password", post(change_password))
}

/// The current password is checked as a sign-in checks one (throttled, a
/// wrong one a failed login of the user from this address).
async fn change_password(
    State(state): State<AppState>,
    authed: Authed,
    ClientIp(ip): ClientIp,
    JsonBody(change): JsonBody<PasswordChange, PASSWORD_CHANGE_LIMIT>,
) -> AppResult<Json<RevokedCount>> {
    let new_password = change.new_password.expose_secret();
    if let Some(problem) = password_length_problem(new_password) {
        return Err(AppError::InvalidRequest(problem));
    }
    const WRONG: &str = "the current password is wrong";
    let user = check_password(
        &state,
        &authed.session.username,
        change.current_password.expose_secret(),
        ip,
        WRONG,
    )
    .await?;
    if user.id != authed.session.user_id {
        // The name now belongs to another user (deleted and made again).
        return Err(AppError::InvalidGrant {
            reason: Reason::Invalid,
            description: WRONG,
        });
    }
    let Ok(slot) = state.hasher.enter() else {
        return Err(AppError::TemporarilyUnavailable { retry_after: 1 });
    };
    let hash = slot.hash(new_password.to_owned()).await?;
    let now = crate::clock::now();
    let revoked = state
        .store
        .replace_password(&user.id, &hash, Some(&authed.session.id), now)
        .await?;
    Ok(Json(mark_all_revoked(&state, &revoked, now)))
}
