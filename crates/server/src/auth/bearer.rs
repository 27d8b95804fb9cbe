//! Bearer tokens (RFC 6750): reading one from the `Authorization` header,
//! and checking its signature, header, `iss`, `aud` and time, every refusal
//! a 401 `invalid_token`.

use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use latchkey_protocol::{Claims, KeySet, Reason, TokenError};

use crate::error::AppError;

/// The bearer token of a request, if it sent one. Another scheme (`Basic`)
/// or an empty `Bearer` is no token at all: RFC 6750 §3.1 then wants a
/// challenge without an error code.
pub fn bearer(parts: &Parts) -> Result<Option<&str>, AppError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        AppError::invalid_token(
            "the Authorization header is not valid text",
            Some(Reason::Invalid),
        )
    })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Ok(None),
    }
}

/// Verifies a bearer token's signature, header, `iss` and `aud` (not its
/// time) against `keys` and `issuer`.
pub fn verify_with(keys: &KeySet, issuer: &str, token: &str) -> Result<Claims, AppError> {
    keys.verify_signed(token, issuer).map_err(token_error)
}

/// A verified token's `exp` and `nbf` against `now`, as a 401.
pub fn check_time(claims: &Claims, now: i64, leeway: u64) -> Result<(), AppError> {
    claims.check_time(now, leeway).map_err(token_error)
}

fn token_error(e: TokenError) -> AppError {
    let reason = match e {
        TokenError::Expired => Reason::Expired,
        _ => Reason::Invalid,
    };
    AppError::invalid_token(e.to_string(), Some(reason))
}
