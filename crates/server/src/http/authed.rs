//! The `Authed` extractor: a handler that takes it cannot forget to check
//! the bearer token or its session.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use latchkey_protocol::{Claims, Reason};

use crate::auth::bearer::{bearer, check_time, verify_with};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::SessionRecord;

/// A request with a valid access token of a live session.
pub struct Authed {
    pub claims: Arc<Claims>,
    pub session: SessionRecord,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer(parts)?.ok_or(AppError::InvalidToken {
            description: "no access token was sent".into(),
            reason: None,
            token_sent: false,
        })?;
        let now = crate::clock::now();
        let claims = match state.verified.get(token) {
            Some(claims) => claims,
            None => {
                let keys = state.keys.current();
                let claims = Arc::new(verify_with(&keys.verify, &state.settings.issuer, token)?);
                state.verified.insert(token, claims.clone());
                claims
            }
        };
        check_time(&claims, now, state.settings.leeway)?;
        let session = state
            .sessions
            .check(state.store.as_ref(), &claims.sid, now)
            .await?;
        if session.user_id != claims.sub {
            return Err(AppError::invalid_token(
                "the token does not match its session",
                Some(Reason::Invalid),
            ));
        }
        Ok(Authed { claims, session })
    }
}
