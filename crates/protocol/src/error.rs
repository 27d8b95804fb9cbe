//! The error body every failing endpoint answers with (RFC 6749 §5.2,
//! RFC 6750 §3.1), and its stable codes.

use serde::{Deserialize, Serialize};

/// A protocol error code, the `error` field of an [`ErrorBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: bad JSON or form, a missing or mistyped field, a limit exceeded.
    InvalidRequest,
    /// Wrong credentials, or an unknown, expired, spent or revoked refresh token.
    InvalidGrant,
    /// A `grant_type` other than `password` or `refresh_token`.
    UnsupportedGrantType,
    /// A missing, malformed, forged, expired or revoked access token (always 401).
    InvalidToken,
    /// Too many failed sign-ins: wait for `Retry-After`.
    SlowDown,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The body is over the endpoint's size limit.
    RequestTooLarge,
    /// Something failed on the server; never caused by the request's content.
    ServerError,
    /// A pull cursor beyond the user's latest rev (a server restored from an
    /// older backup, 409): pull from 0 and queue again what the server lacks.
    CursorAhead,
    /// The server cannot take the request now (its store is unreachable, or
    /// too many sign-ins wait for the password hasher): 503 with
    /// `Retry-After`. A client treats it like a network error.
    TemporarilyUnavailable,
    /// A code this version does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidGrant => "invalid_grant",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidToken => "invalid_token",
            Self::SlowDown => "slow_down",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTooLarge => "request_too_large",
            Self::ServerError => "server_error",
            Self::CursorAhead => "cursor_ahead",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::Unknown => "unknown",
        }
    }
}

/// Why a session or token is no longer good, where the client must act on it
/// (the app says "your session expired" and "you were signed out" differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The session's absolute lifetime, or the token's, ran out.
    Expired,
    /// The session was ended: logout, or an administrator.
    Revoked,
    /// A spent refresh token was presented again; the whole session was revoked.
    Reused,
    /// The token is unknown, malformed or forged.
    Invalid,
    /// A reason this version does not know.
    #[serde(other)]
    Unknown,
}

impl Reason {
    /// The wire spelling of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Reused => "reused",
            Self::Invalid => "invalid",
            Self::Unknown => "unknown",
        }
    }

    /// Parses the wire spelling; anything else is [`Reason::Unknown`].
    pub fn parse(s: &str) -> Self {
        match s {
            "expired" => Self::Expired,
            "revoked" => Self::Revoked,
            "reused" => Self::Reused,
            "invalid" => Self::Invalid,
            _ => Self::Unknown,
        }
    }
}

/// `{"error": "<code>", "error_description": "<human text>", "reason"?: ...}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub error_description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}
