//! The administrative subcommands: `user add`, `user list`, `session
//! revoke` and `keys rotate`, each run against the database and done.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use latchkey_protocol::Reason;

use crate::auth::password::hash_password;
use crate::cli::{KeysCommand, SessionCommand, UserCommand};
use crate::clock::now;
use crate::error::{Error, Result};
use crate::store::{self, Store as _};

/// Usernames: 1 to 64 characters, no spaces or control characters.
pub fn check_username(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 64 {
        return Err(Error::Invalid(
            "a username must be 1 to 64 characters long".into(),
        ));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::Invalid(
            "a username may not contain spaces or control characters".into(),
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(Error::Invalid("the password is empty".into()));
    }
    if password.len() > 1024 {
        return Err(Error::Invalid(
            "the password is longer than 1024 bytes".into(),
        ));
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(Error::io("cannot read the password from standard input"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Invalid(
            "no terminal to ask for the password on; pass it with --password-stdin".into(),
        ));
    }
    let first =
        rpassword::prompt_password("Password: ").map_err(Error::io("cannot read the password"))?;
    let second = rpassword::prompt_password("Repeat password: ")
        .map_err(Error::io("cannot read the password"))?;
    if first != second {
        return Err(Error::Invalid("the passwords do not match".into()));
    }
    Ok(first)
}

/// `user add` and `user list`.
pub async fn user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add {
            username,
            password_stdin,
            db,
        } => {
            check_username(&username)?;
            let password = read_password(password_stdin)?;
            check_password(&password)?;
            let store = store::open(&db.db).await?;
            let user = store
                .create_user(&username, &hash_password(password).await?, now())
                .await?;
            println!("added user {} (id {})", user.username, user.id);
        }
        UserCommand::List { db } => {
            let store = store::open(&db.db).await?;
            let mut out = std::io::stdout().lock();
            for user in store.list_users().await? {
                writeln!(out, "{}\t{}", user.username, user.id)
                    .map_err(Error::io("cannot write to standard output"))?;
            }
        }
    }
    Ok(())
}

/// `session revoke`: ends every session of a user.
pub async fn session(cmd: SessionCommand) -> Result<()> {
    let SessionCommand::Revoke { username, db } = cmd;
    let store = store::open(&db.db).await?;
    match store.revoke_user(&username, Reason::Revoked, now()).await? {
        None => return Err(Error::NoSuchUser(username)),
        Some(n) => println!("revoked {n} session(s) of {username}"),
    }
    Ok(())
}

/// `keys rotate`: a new current signing key.
pub async fn keys(cmd: KeysCommand) -> Result<()> {
    let KeysCommand::Rotate { db } = cmd;
    let store = store::open(&db.db).await?;
    let now = now();
    let key = crate::keys::generate(now);
    let kid = key.kid.clone();
    store.rotate_key(key, now).await?;
    println!("new signing key {kid}; running servers switch to it within a second");
    Ok(())
}
