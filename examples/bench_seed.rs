//! For `scripts/bench-app.sh`: signs in once and writes some notes exactly
//! where the app keeps them (`$XDG_DATA_HOME/dev.latchkey.notes/engine`, the
//! keychain service `latchkey`), so the app can then be started with the
//! server down and restore the session offline.
//!
//! `bench_seed SERVER_URL USERNAME NOTES` with the password on stdin.

use std::io::BufRead as _;
use std::sync::Arc;
use std::time::Duration;

use latchkey_client::{Config, Engine, KeyringVault, ReqwestHttp, SystemClock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, server, username, count] = args.as_slice() else {
        return Err("usage: bench_seed SERVER_URL USERNAME NOTES (password on stdin)".into());
    };
    let count: usize = count.parse()?;
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password)?;

    let data_home = std::env::var_os("XDG_DATA_HOME").ok_or("set XDG_DATA_HOME")?;
    // The app's data folder: tauri.conf.json's identifier, then "engine".
    let data_dir = std::path::Path::new(&data_home)
        .join("dev.latchkey.notes")
        .join("engine");
    let vault = Arc::new(KeyringVault::new(latchkey_app::KEYCHAIN_SERVICE)?);
    let http = Arc::new(ReqwestHttp::new(Duration::from_secs(3))?);
    let engine = Engine::start(Config::new(data_dir), vault, http, Arc::new(SystemClock)).await?;
    engine.sign_in(server, username, password.trim()).await?;
    for i in 1..=count {
        let body = format!("Note {i} of the start-up benchmark.\n").repeat(20);
        engine
            .save_note(None, None, format!("Benchmark note {i}"), body)
            .await?;
    }
    let status = engine.sync_now().await?;
    println!(
        "seeded: {count} notes, state {:?}, pending {}",
        status.state, status.pending
    );
    Ok(())
}
