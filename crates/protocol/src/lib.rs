//! The Latchkey wire contract (`PROTOCOL.md`), defined once and shared by the
//! client engine and the server: every request, response, claim set and error
//! code, plus the one access-token verifier both sides use.

pub mod auth;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod secret;
pub mod sync;
pub mod token;

pub use auth::{
    Jwk, Jwks, MAX_DEVICE_NAME_CHARS, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, PasswordChange,
    RevokedCount, ServerMetadata, SessionInfo, SessionSummary, SessionsResponse, TokenResponse,
    UserInfo, password_length_problem,
};
pub use error::{ErrorBody, ErrorCode, Reason};
pub use secret::{ExposeSecret, SecretString};
pub use sync::{
    Change, ChangedEvent, HistoryResponse, NoteVersion, Op, OpResult, OpStatus, PullResponse,
    PushRequest, PushResponse, RevokedEvent, ServerNote,
};
pub use token::{Claims, KeySet, TokenError};

/// The `aud` of every access token.
pub const AUDIENCE: &str = "latchkey";
/// The JOSE `typ` of an access token (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// The only signing algorithm Latchkey accepts.
pub const ALGORITHM: &str = "EdDSA";
/// Largest access token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest clock leeway either side may be configured with, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 60;
