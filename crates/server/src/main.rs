use clap::Parser as _;

fn main() -> std::process::ExitCode {
    give_large_blocks_back();
    let cli = latchkey_server::Cli::parse();
    latchkey_server::cli::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(latchkey_server::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every sign-in hashes with 19 MiB of Argon2 memory. glibc raises its mmap
/// threshold to the size of each large block freed, so after the first
/// sign-in those blocks came from its heap arenas, which kept them: 200
/// sign-ins left the server holding over 1 GiB. A fixed threshold (setting
/// one turns the raising off) keeps blocks of 1 MiB and more on mmap, given
/// back to the system as soon as they are freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_large_blocks_back() {
    // SAFETY: sets one allocator parameter, before any other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_large_blocks_back() {}
