//! Sign-in, refresh, session and key-discovery messages.

use serde::{Deserialize, Serialize};

use crate::secret::{self, SecretString};

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The stable user id (the token's `sub`).
    pub id: String,
    pub username: String,
}

/// 200 answer of `POST /v1/auth/token`, for both grants.
///
/// The tokens are [`SecretString`]s: `Debug` shows `[REDACTED]`, so no log
/// line or error can print one, and they are zeroed when dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    #[serde(serialize_with = "secret::expose")]
    pub access_token: SecretString,
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    #[serde(serialize_with = "secret::expose")]
    pub refresh_token: SecretString,
    /// Seconds until the session (and so every refresh token of it) ends.
    pub refresh_expires_in: u64,
    pub session_id: String,
    pub user: UserInfo,
}

/// 200 answer of `GET /v1/auth/session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub user: UserInfo,
    /// The presented access token's `exp`.
    pub expires_at: i64,
    /// When the session ends (the refresh token's absolute expiry).
    pub refresh_expires_at: i64,
}

/// The most Unicode characters a password grant's `device_name` may have.
pub const MAX_DEVICE_NAME_CHARS: usize = 64;
/// The fewest characters a new password may have.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The most bytes (UTF-8) a password may have.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// One live session of the user, in `GET /v1/auth/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub session_id: String,
    /// What the device called itself at sign-in, if it said.
    pub device_name: Option<String>,
    pub created_at: i64,
    /// The last refresh or session check (moved at most once a minute).
    pub last_seen_at: i64,
    /// True for the session of the token that asked.
    pub current: bool,
}

/// 200 answer of `GET /v1/auth/sessions`: most recently seen first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsResponse {
    pub sessions: Vec<SessionSummary>,
}

/// 200 answer of `POST /v1/auth/sessions/revoke-others` and
/// `POST /v1/account/password`: how many sessions were revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCount {
    pub revoked: u64,
}

/// Body of `POST /v1/account/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordChange {
    #[serde(serialize_with = "secret::expose")]
    pub current_password: SecretString,
    #[serde(serialize_with = "secret::expose")]
    pub new_password: SecretString,
}

/// Why a new password is refused, or None if its length is allowed:
/// at least [`MIN_PASSWORD_CHARS`] characters, at most
/// [`MAX_PASSWORD_BYTES`] bytes.
pub fn password_length_problem(password: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        Some(format!(
            "the new password must be at least {MIN_PASSWORD_CHARS} characters long"
        ))
    } else if password.len() > MAX_PASSWORD_BYTES {
        Some(format!(
            "the new password may be at most {MAX_PASSWORD_BYTES} bytes long"
        ))
    } else {
        None
    }
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub issuer: String,
    pub token_endpoint: String,
    pub revocation_endpoint: String,
    pub jwks_uri: String,
    pub grant_types_supported: Vec<String>,
}

/// One public signing key (RFC 8037 OKP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub crv: String,
    #[serde(default)]
    pub x: String,
    #[serde(default)]
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// `GET /.well-known/jwks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}
