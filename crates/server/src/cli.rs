//! The administrative subcommands, and the `--demo` user.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use latchkey_protocol::Reason;
use rand::Rng as _;

use crate::auth::hash_password_blocking;
use crate::config::{KeysCommand, SessionCommand, UserCommand};
use crate::server::open_store;
use crate::store::{Store, StoreError};

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

/// Usernames: 1 to 64 characters, no spaces or control characters.
pub fn check_username(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.chars().count() > 64 {
        bail!("a username must be 1 to 64 characters long");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!("a username may not contain spaces or control characters");
    }
    Ok(())
}

fn check_password(password: &str) -> anyhow::Result<()> {
    if password.is_empty() {
        bail!("the password is empty");
    }
    if password.len() > 1024 {
        bail!("the password is longer than 1024 bytes");
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on; pass it with --password-stdin");
    }
    let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
    let second =
        rpassword::prompt_password("Repeat password: ").context("cannot read the password")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&password)).await?
}

pub async fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            username,
            password_stdin,
            db,
        } => {
            check_username(&username)?;
            let password = read_password(password_stdin)?;
            check_password(&password)?;
            let store = open_store(&db.db).await?;
            match store
                .create_user(&username, &hash(password).await?, crate::now())
                .await
            {
                Ok(user) => println!("added user {} (id {})", user.username, user.id),
                Err(StoreError::UserExists(name)) => bail!("a user named {name:?} already exists"),
                Err(e) => return Err(e.into()),
            }
        }
        UserCommand::List { db } => {
            let store = open_store(&db.db).await?;
            let mut out = std::io::stdout().lock();
            for user in store.list_users().await? {
                writeln!(out, "{}\t{}", user.username, user.id)?;
            }
        }
    }
    Ok(())
}

pub async fn session(cmd: SessionCommand) -> anyhow::Result<()> {
    let SessionCommand::Revoke { username, db } = cmd;
    let store = open_store(&db.db).await?;
    match store
        .revoke_user(&username, Reason::Revoked, crate::now())
        .await?
    {
        None => bail!("there is no user named {username:?}"),
        Some(n) => println!("revoked {n} session(s) of {username}"),
    }
    Ok(())
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    let KeysCommand::Rotate { db } = cmd;
    let store = open_store(&db.db).await?;
    let now = crate::now();
    let key = crate::keys::generate(now);
    let kid = key.kid.clone();
    store.rotate_key(key, now).await?;
    println!("new signing key {kid}; running servers switch to it within a second");
    Ok(())
}

/// Where `--demo` keeps the demo password: beside the database.
pub fn demo_password_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".demo-password");
    db.with_file_name(name)
}

/// Makes sure the user `demo` exists with the password kept beside the
/// database (mode 0600), and prints how to sign in.
pub async fn ensure_demo_user(store: &dyn Store, db: &Path, url: &str) -> anyhow::Result<()> {
    let path = demo_password_path(db);
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
        _ => {
            let password: String = rand::thread_rng()
                .sample_iter(&rand::distributions::Alphanumeric)
                .take(20)
                .map(char::from)
                .collect();
            write_private(&path, &password)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if !store
                .set_password("demo", &hash(password.clone()).await?)
                .await?
            {
                store
                    .create_user("demo", &hash(password.clone()).await?, crate::now())
                    .await?;
            }
            password
        }
    };
    if store.find_user("demo").await?.is_none() {
        store
            .create_user("demo", &hash(password.clone()).await?, crate::now())
            .await?;
    }
    println!("demo user ready: server {url}  username demo  password {password}");
    println!("(the password is kept in {})", path.display());
    Ok(())
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
