//! latchkey-client: everything the Latchkey desktop app decides, with no
//! Tauri in it, so it is tested and benchmarked without a window.
//!
//! * [`Engine`]: sign-in, the session state machine with its offline policy,
//!   the single-flight refresh, connectivity and reconnect sync.
//! * [`vault`]: the OS keychain (one small JSON entry per server + user).
//! * [`store`]: local notes and the outbox, in SQLite.
//! * [`api`] and [`http`]: the protocol calls over an injectable transport.
//! * [`policy`]: the pure decisions (offline policy, refresh, backoff).
//! * [`export`]: "Export all notes", one Markdown file per note.

pub mod api;
pub mod clock;
pub mod engine;
pub mod error;
pub mod export;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod policy;
pub mod sse;
pub mod status;
pub mod store;
pub mod vault;

pub use clock::{Clock, SystemClock};
pub use engine::{Config, Engine};
pub use error::{Error, Result};
pub use export::{ExportReport, export_notes};
pub use http::{Http, ReqwestHttp};
/// A note's earlier version, as [`Engine::note_history`] lists it.
pub use latchkey_protocol::NoteVersion;
/// A device signed in to the account, as [`Engine::list_sessions`] lists it.
pub use latchkey_protocol::SessionSummary;
/// Tokens and passwords in memory (see `latchkey_protocol::secret`).
pub use latchkey_protocol::{ExposeSecret, SecretString};
pub use status::{AccountItem, SessionState, Status, StatusError};
pub use store::Note;
pub use vault::{KeyringVault, UnavailableVault, Vault, VaultEntry, system_vault};
