//! The administrative subcommands: `user add`, `user list`, `user passwd`,
//! `user delete`, `session list`, `session revoke`, `keys rotate`,
//! `backup` and `migrate-store`, each run against the database and done.

use std::io::{BufRead as _, IsTerminal as _};

use latchkey_protocol::{Reason, password_length_problem};

use crate::auth::password::hash_password;
use crate::cli::{KeysCommand, MigrateArgs, PasswordArgs, SessionCommand, UserCommand};
use crate::clock::now;
use crate::error::{Error, Result};
use crate::store;

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

/// Writes `line` to standard output.
fn say(out: &mut impl std::io::Write, line: std::fmt::Arguments<'_>) -> Result<()> {
    writeln!(out, "{line}").map_err(Error::io("cannot write to standard output"))
}

/// Unix seconds as a UTC time a person reads (`2026-12-03 12:43:50 UTC`).
fn readable(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    let rfc = humantime::format_rfc3339_seconds(at).to_string();
    format!("{} UTC", rfc.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `user add`, `user list`, `user passwd` and `user delete`.
pub async fn user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add(PasswordArgs {
            username,
            password_stdin,
            db,
        }) => {
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
                say(&mut out, format_args!("{}\t{}", user.username, user.id))?;
            }
        }
        UserCommand::Passwd(PasswordArgs {
            username,
            password_stdin,
            db,
        }) => {
            let store = store::open(&db.db).await?;
            let user = store
                .find_user(&username)
                .await?
                .ok_or_else(|| Error::NoSuchUser(username.clone()))?;
            let password = read_password(password_stdin)?;
            if let Some(problem) = password_length_problem(&password) {
                return Err(Error::Invalid(problem));
            }
            let hash = hash_password(password).await?;
            let revoked = store.replace_password(&user.id, &hash, None, now()).await?;
            println!(
                "changed the password of {username}; revoked {} session(s)",
                revoked.len()
            );
        }
        UserCommand::Delete { username, yes, db } => {
            if !yes {
                return Err(Error::Invalid(format!(
                    "deleting {username:?} removes all their notes and sessions for good; \
                     add --yes to do it"
                )));
            }
            let store = store::open(&db.db).await?;
            let Some(gone) = store.delete_user(&username, now()).await? else {
                return Err(Error::NoSuchUser(username));
            };
            println!(
                "deleted user {username}: {} note(s), {} earlier version(s), {} op result(s), \
                 {} session(s)",
                gone.notes, gone.versions, gone.op_results, gone.sessions
            );
        }
    }
    Ok(())
}

/// `session list`: a user's live sessions; `session revoke`: ends every
/// session of a user.
pub async fn session(cmd: SessionCommand) -> Result<()> {
    match cmd {
        SessionCommand::List { username, db } => {
            let store = store::open(&db.db).await?;
            let user = store
                .find_user(&username)
                .await?
                .ok_or(Error::NoSuchUser(username))?;
            let mut out = std::io::stdout().lock();
            for s in store.live_sessions(&user.id, now()).await? {
                let device = s.device_name.as_deref().unwrap_or("(unnamed device)");
                say(
                    &mut out,
                    format_args!(
                        "{device}\tcreated {}\tlast seen {}\t{}",
                        readable(s.created_at),
                        readable(s.last_seen_at),
                        s.id
                    ),
                )?;
            }
        }
        SessionCommand::Revoke { username, db } => {
            let store = store::open(&db.db).await?;
            match store.revoke_user(&username, Reason::Revoked, now()).await? {
                None => return Err(Error::NoSuchUser(username)),
                Some(n) => println!("revoked {n} session(s) of {username}"),
            }
        }
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

/// `backup`: a consistent copy of the database into a new file, checked.
pub async fn backup(db: &store::Location, to: &std::path::Path) -> Result<()> {
    let Some(db) = db.sqlite_path() else {
        return Err(Error::Invalid(
            "a PostgreSQL store is backed up with PostgreSQL's own tools: \
             pg_dump --format=custom --file=FILE (see the README, \"Running several instances\")"
                .into(),
        ));
    };
    if to.exists() {
        return Err(Error::Invalid(format!(
            "{} exists already; give a new file to back up into",
            to.display()
        )));
    }
    let (from, into) = (db.to_owned(), to.to_owned());
    let report = tokio::task::spawn_blocking(move || store::sqlite_backup(&from, &into))
        .await
        .map_err(store::StoreError::from)??;
    println!(
        "backed up {} to {} (users {}, notes {}, earlier versions {}, sessions {}); the copy checks out",
        db.display(),
        to.display(),
        report.users,
        report.notes,
        report.versions,
        report.sessions
    );
    Ok(())
}

/// `migrate-store`: the SQLite database copied whole into PostgreSQL,
/// checked; one line per table (rows and SHA-256), then what to do next.
pub async fn migrate_store(args: MigrateArgs) -> Result<()> {
    let Some(from) = args.from.sqlite_path() else {
        return Err(Error::Invalid(
            "--from names the SQLite database file of the server to copy, not a PostgreSQL URL"
                .into(),
        ));
    };
    let store::Location::Postgres(to) = &args.to else {
        return Err(Error::Invalid(format!(
            "--to must be a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DBNAME), not {}",
            args.to
        )));
    };
    let report = store::migrate_store(from, to, args.replace).await?;
    let mut out = std::io::stdout().lock();
    if let Some(version) = report.migrated_from {
        say(
            &mut out,
            format_args!(
                "migrated {} from schema version {version} first",
                from.display()
            ),
        )?;
    }
    for t in &report.tables {
        say(
            &mut out,
            format_args!("{:<15} {:>9} rows  sha256 {}", t.table, t.rows, t.hex()),
        )?;
    }
    say(
        &mut out,
        format_args!(
            "copied {} into {} in {:.1} s; every table matches the source. Serve with --db on \
             it and the same --issuer: devices stay signed in",
            from.display(),
            args.to,
            report.took.as_secs_f64()
        ),
    )
}
