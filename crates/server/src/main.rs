//! The `latchkey-server` binary: parses the command line and hands it to
//! the library.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    latchkey_server::run(latchkey_server::Cli::parse())
}
