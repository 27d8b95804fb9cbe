//! latchkey-server: issues and verifies the JWTs, rotates refresh tokens
//! with reuse detection, revokes sessions, and stores the notes
//! (PROTOCOL.md). `main.rs` parses the command line and calls [`run`].

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod keys;
pub mod proxy;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod throttle;

pub use config::Cli;
pub use server::{Server, build_state};

/// Unix seconds, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    use config::Command;
    match cli.command {
        Command::Serve(args) => server::serve(args).await,
        Command::User(cmd) => cli::user(cmd).await,
        Command::Session(cmd) => cli::session(cmd).await,
        Command::Keys(cmd) => cli::keys(cmd).await,
    }
}
