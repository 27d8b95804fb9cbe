//! The engine's one error type. Every variant has a stable [`Error::code`]
//! the UI maps to a sentence, and a `Display` that is already one, safe to
//! show and to log: no token, password or refresh token ever appears in it.

use latchkey_protocol::TokenError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No OS keychain is reachable (no Secret Service, locked collection,
    /// or only keyring's mock store): tokens cannot be kept safely.
    #[error(
        "the system keychain is not available ({detail}); Latchkey keeps your sign-in only there, so it cannot sign you in"
    )]
    KeychainUnavailable { detail: String },
    /// The server could not be reached (refused, timed out, DNS, TLS).
    #[error("the server cannot be reached ({detail})")]
    Network { detail: String },
    /// Plain `http://` to a host that is not this machine.
    #[error("refusing to send a password over plain http to {host}; use an https:// server URL")]
    InsecureUrl { host: String },
    /// The server URL does not parse.
    #[error("the server URL is not valid: {0}")]
    InvalidUrl(String),
    /// Wrong username or password.
    #[error("the username or password is wrong")]
    InvalidCredentials,
    /// The current password given to change it is wrong.
    #[error("the current password is wrong")]
    WrongPassword,
    /// The server has no such live session of this user.
    #[error("that device is not signed in any more")]
    SessionNotFound,
    /// Too many failed sign-ins from here; wait.
    #[error("too many failed sign-in attempts; try again in {retry_after} seconds")]
    Throttled { retry_after: u64 },
    /// The server ended the session by time.
    #[error("your session has expired; sign in again")]
    SessionExpired,
    /// The server ended the session: sign-out elsewhere, an administrator, or
    /// a reused refresh token.
    #[error("you were signed out by the server; sign in again")]
    SessionRevoked,
    /// Offline and past the offline policy (grace, refresh expiry, clock).
    #[error("Latchkey is locked: {0}")]
    Locked(String),
    /// Nobody is signed in.
    #[error("nobody is signed in")]
    NotSignedIn,
    /// Work begun for one account found another active when it went on:
    /// it stops, and the account it was for does it when active again.
    #[error("another account became active; this was left for later")]
    Switched,
    /// What was asked needs the server (history, for one), and the engine
    /// is offline: everything else keeps working.
    #[error("{0} needs the server, and Latchkey is offline now")]
    Offline(&'static str),
    /// "Work offline" is on.
    #[error("working offline is switched on")]
    WorkingOffline,
    /// A token failed verification (forged, tampered, wrong issuer).
    #[error("the sign-in could not be verified: {0}")]
    Token(#[from] TokenError),
    /// A session kept in the keychain is damaged or fails verification:
    /// the account must sign in again.
    #[error("{0}")]
    StoredSession(String),
    /// The server answered something the protocol does not allow.
    #[error("the server answered unexpectedly: {0}")]
    Server(String),
    /// The local database failed (full disk, read-only folder, damage).
    #[error("your notes could not be saved on this computer: {0}")]
    Storage(String),
    /// No such note.
    #[error("that note does not exist")]
    NoteNotFound,
    /// The caller's input breaks a limit.
    #[error("{0}")]
    InvalidInput(String),
    /// The server (or a proxy before it) refused a request as too large:
    /// a push is split and sent again.
    #[error("the server (or a proxy before it) refused a note as too large")]
    TooLarge,
    /// A pull cursor beyond the server's latest change: the server was
    /// restored from an older backup, and this device resyncs from 0.
    #[error("the server has lost recent changes (restored from a backup?); resyncing")]
    CursorAhead,
    /// Exporting notes to a folder failed: the folder is missing, not a
    /// folder, cannot be written, or the disk is full. The detail says which,
    /// and how many files were written before it.
    #[error("the notes could not be exported: {0}")]
    Export(String),
}

impl Error {
    /// The stable code the UI maps to a sentence.
    pub fn code(&self) -> &'static str {
        match self {
            Error::KeychainUnavailable { .. } => "keychain_unavailable",
            Error::Network { .. } => "network",
            Error::InsecureUrl { .. } => "insecure_url",
            Error::InvalidUrl(_) => "invalid_url",
            Error::InvalidCredentials => "invalid_credentials",
            Error::WrongPassword => "wrong_password",
            Error::SessionNotFound => "session_not_found",
            Error::Throttled { .. } => "throttled",
            Error::SessionExpired => "session_expired",
            Error::SessionRevoked => "session_revoked",
            Error::Locked(_) => "locked",
            Error::NotSignedIn => "not_signed_in",
            Error::Switched => "account_switched",
            Error::Offline(_) => "offline",
            Error::WorkingOffline => "working_offline",
            Error::Token(_) | Error::StoredSession(_) => "token_invalid",
            Error::Server(_) => "server_error",
            Error::Storage(_) => "storage",
            Error::NoteNotFound => "note_not_found",
            Error::InvalidInput(_) => "invalid_input",
            Error::TooLarge => "too_large",
            Error::CursorAhead => "cursor_ahead",
            Error::Export(_) => "export",
        }
    }

    /// Worth retrying later: the server or the network, not the session.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Network { .. } | Error::Server(_))
    }

    /// The server ended the session.
    pub fn ends_session(&self) -> bool {
        matches!(self, Error::SessionExpired | Error::SessionRevoked)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        let detail = match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => "the disk is full; free some space and save again".into(),
            Some(ErrorCode::ReadOnly) => "the data folder is read-only".into(),
            Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
                "the data folder cannot be written (read-only, missing, or not yours)".into()
            }
            _ => e.to_string(),
        };
        Error::Storage(detail)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
