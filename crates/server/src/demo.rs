//! The `--demo` user: `demo`, with a generated password kept beside the
//! database (mode 0600), so that a first try needs no `user add`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand::Rng as _;

use crate::auth::password::hash_password;
use crate::clock::now;
use crate::error::{Error, Result};
use crate::store::Store;

/// Where `--demo` keeps the demo password: beside the database.
pub fn demo_password_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".demo-password");
    db.with_file_name(name)
}

/// Makes sure the user `demo` exists with the password kept beside the
/// database (mode 0600), and prints how to sign in.
pub async fn ensure_demo_user(store: &dyn Store, db: &Path, url: &str) -> Result<()> {
    let path = demo_password_path(db);
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
        _ => new_password(store, &path).await?,
    };
    if store.find_user("demo").await?.is_none() {
        store
            .create_user("demo", &hash_password(password.clone()).await?, now())
            .await?;
    }
    println!("demo user ready: server {url}  username demo  password {password}");
    println!("(the password is kept in {})", path.display());
    Ok(())
}

/// Generates a password, keeps it at `path` and gives it to `demo` (made
/// if missing).
async fn new_password(store: &dyn Store, path: &Path) -> Result<String> {
    let password: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    write_private(path, &password)
        .map_err(Error::io(format!("cannot write {}", path.display())))?;
    if !store
        .set_password("demo", &hash_password(password.clone()).await?)
        .await?
    {
        store
            .create_user("demo", &hash_password(password.clone()).await?, now())
            .await?;
    }
    Ok(password)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}
