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
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Two passwords of at most 1024 bytes each, JSON-escaped, and the keys.
const PASSWORD_CHANGE_LIMIT: usize = 16 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/account/password", post(change_password))
}

/// The current password is checked like a sign-in: through the throttle
/// (a wrong one is a failed login of the user from this address) and the
/// hasher's queue.
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
    let username = &authed.session.username;
    let attempt = state
        .throttle
        .begin(username, ip)
        .await
        .map_err(|retry_after| AppError::SlowDown { retry_after })?;
    let Ok(slot) = state.hasher.enter() else {
        attempt.abandon();
        return Err(AppError::TemporarilyUnavailable { retry_after: 1 });
    };
    let user = state
        .store
        .find_user(username)
        .await?
        .filter(|u| u.id == authed.session.user_id);
    let ok = slot
        .verify(
            change.current_password.expose_secret().to_owned(),
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await?;
    let (true, Some(user)) = (ok, user) else {
        tracing::info!(%ip, "wrong current password in a password change");
        return Err(AppError::InvalidGrant {
            reason: Reason::Invalid,
            description: "the current password is wrong",
        });
    };
    attempt.succeeded();
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
