//! How the engine behaves: every knob in one [`Config`], with the defaults
//! of DESIGN.md.

use std::path::PathBuf;
use std::time::Duration;

use crate::api::Timeouts;

/// How the engine behaves; [`Config::new`] gives the defaults of DESIGN.md.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where local data lives: one database per user below it.
    pub data_dir: PathBuf,
    /// How long a session is honoured offline since the server last confirmed it.
    pub offline_grace: Duration,
    /// While online, how often `/healthz` is checked.
    pub heartbeat: Duration,
    /// While online, how often a full sync runs: a backstop, since the
    /// live-updates stream brings other devices' changes as they happen.
    pub sync_interval: Duration,
    /// A sync runs this long after the last edit (while online).
    pub edit_debounce: Duration,
    /// Offline probes: from `backoff_min` doubling to `backoff_max`, ±20%.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub timeouts: Timeouts,
    /// Clock leeway for `exp`/`nbf`, seconds (at most 60).
    pub leeway: u64,
    /// Start with "Work offline" on.
    pub work_offline: bool,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            offline_grace: Duration::from_secs(7 * 86_400),
            heartbeat: Duration::from_secs(3),
            sync_interval: Duration::from_secs(300),
            edit_debounce: Duration::from_millis(500),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15),
            timeouts: Timeouts {
                request: Duration::from_secs(10),
                probe: Duration::from_secs(2),
                sync: Duration::from_secs(60),
            },
            leeway: 30,
            work_offline: false,
        }
    }
}
