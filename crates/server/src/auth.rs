//! Passwords, token issuing, and the bearer-token extractor: a handler that
//! takes [`Authed`] cannot forget to check the token or its session.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_protocol::token::{Audience, sign};
use latchkey_protocol::{AUDIENCE, Claims, KeySet, Reason, TokenError};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::error::AppError;
use crate::state::AppState;
use crate::store::{SessionRecord, TokenHash};

/// Argon2id hashing, off the async runtime and bounded, so a flood of
/// sign-ins cannot take the machine's memory.
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Verified against when the username is unknown, so that costs a hash too.
    dummy: String,
}

impl Hasher {
    pub fn new() -> anyhow::Result<Self> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        Ok(Self {
            permits: Arc::new(Semaphore::new(parallel)),
            dummy: hash_password_blocking(&random_token())?,
        })
    }

    /// Checks `password` against `hash`, or against the dummy hash when
    /// there is no user, taking the same time either way.
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(ok && known)
    }
}

/// An Argon2id PHC string for `password` (blocking: call off the runtime).
pub fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))
}

/// 256 random bits, base64url: a refresh token, or a generated secret.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the server keeps of a refresh token.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A signed access token for `session`, never outliving the session.
pub fn issue_access_token(state: &AppState, session: &SessionRecord, now: i64) -> (String, u64) {
    let exp = (now + state.settings.access_ttl as i64).min(session.expires_at);
    let claims = Claims {
        iss: state.settings.issuer.clone(),
        aud: Audience::One(AUDIENCE.into()),
        sub: session.user_id.clone(),
        name: session.username.clone(),
        sid: session.id.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now,
        nbf: now,
        exp,
    };
    let keys = state.keys.current();
    (
        sign(&keys.signing, &keys.kid, &claims),
        (exp - now).max(0) as u64,
    )
}

/// Verifies a bearer token's signature, header, `iss` and `aud` (not time).
pub fn verify_signed(state: &AppState, token: &str) -> Result<Claims, AppError> {
    verify_with(&state.keys.current().verify, &state.settings.issuer, token)
}

/// [`verify_signed`] against given keys and issuer.
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

/// Access tokens whose signature, header, `iss` and `aud` were verified,
/// so a token used again skips the Ed25519 check (about half the CPU of an
/// authenticated request). Keyed by the whole token, so only a byte-exact
/// copy of a verified token hits; time and the session are still checked on
/// every request. Bounded: emptied when full.
#[derive(Default)]
pub struct VerifiedTokens {
    map: std::sync::RwLock<std::collections::HashMap<Box<str>, Arc<Claims>>>,
}

const VERIFIED_TOKENS_MAX: usize = 20_000;

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<Arc<Claims>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn insert(&self, token: &str, claims: Arc<Claims>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_TOKENS_MAX {
            map.clear();
        }
        map.insert(token.into(), claims);
    }

    /// Forgets every token, e.g. when the signing keys change.
    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

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
        let now = crate::now();
        let claims = match state.verified.get(token) {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(verify_signed(state, token)?);
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
