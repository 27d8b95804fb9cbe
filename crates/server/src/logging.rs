//! Log output: to stderr, one line per event, filtered by `LATCHKEY_LOG`.

use std::io::IsTerminal as _;

/// Logs to stderr; `LATCHKEY_LOG` (e.g. `debug`) sets the filter.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
