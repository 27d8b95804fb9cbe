//! latchkey-server: issues and verifies the JWTs, rotates refresh tokens
//! with reuse detection, revokes sessions, and stores the notes
//! (PROTOCOL.md). `main.rs` parses the command line and calls [`run`].

pub mod admin;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod demo;
pub mod error;
pub mod evict;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod keys;
pub mod live;
pub mod logging;
pub mod proxy;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod throttle;
pub mod upkeep;

use std::process::ExitCode;

pub use cli::Cli;
pub use clock::now;
pub use error::Error;
pub use server::{Server, build_state};

/// The binary's whole run after parsing: sets up the process (allocator,
/// logging), runs `cli` on a new runtime, and prints a failure as one line.
pub fn run(cli: Cli) -> ExitCode {
    // First, while this is the only thread.
    auth::password::give_large_blocks_back();
    logging::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line to completion.
pub async fn execute(cli: Cli) -> Result<(), Error> {
    use cli::Command;
    match cli.command {
        Command::Serve(args) => server::serve(args).await,
        Command::User(cmd) => admin::user(cmd).await,
        Command::Session(cmd) => admin::session(cmd).await,
        Command::Keys(cmd) => admin::keys(cmd).await,
        Command::Backup { to, db } => admin::backup(&db.db, &to).await,
        Command::MigrateStore(args) => admin::migrate_store(args).await,
    }
}
