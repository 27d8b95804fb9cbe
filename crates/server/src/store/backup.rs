//! `latchkey-server backup`: a consistent copy of a SQLite store while the
//! server runs, through SQLite's online backup API (pages copied in steps,
//! writers never blocked for long; a write meanwhile restarts the copy, so
//! what lands is one committed state). The copy is checked before it is
//! reported. A PostgreSQL store is backed up with `pg_dump` (README).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Result, StoreError};

/// Pages copied per step of the online backup, and the pause between
/// steps that lets the server's writes in.
const PAGES_PER_STEP: std::ffi::c_int = 1024;
const PAUSE: Duration = Duration::from_millis(5);

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    pub users: i64,
    pub notes: i64,
    pub versions: i64,
    pub sessions: i64,
}

/// Copies the SQLite store at `from` into the new file `to` (created with
/// mode 0600; an existing file is never overwritten), then checks the copy.
/// Blocking: run it off the async runtime.
pub fn sqlite_backup(from: &Path, to: &Path) -> Result<BackupReport> {
    let open_err = |path: &Path| {
        let path = path.display().to_string();
        move |source: rusqlite::Error| StoreError::Open {
            path,
            source: Box::new(source),
        }
    };
    let src = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err(from))?;
    src.busy_timeout(Duration::from_secs(10))?;
    // A file that is no database fails here, clearly.
    src.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(open_err(from))?;
    create_new_private(to).map_err(|e| StoreError::Open {
        path: to.display().to_string(),
        source: Box::new(e),
    })?;
    let copied = (|| {
        let mut dst = Connection::open(to)?;
        rusqlite::backup::Backup::new(&src, &mut dst)?.run_to_completion(
            PAGES_PER_STEP,
            PAUSE,
            None,
        )?;
        // One file, no WAL beside it: the copy is complete on its own.
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        check(&dst)
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
    }
    copied
}

/// The copy reads back whole, and what it holds.
fn check(db: &Connection) -> Result<BackupReport> {
    let verdict: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt(format!(
            "the backup failed its integrity check: {verdict}"
        )));
    }
    let count = |table: &str| -> Result<i64> {
        Ok(db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
    };
    Ok(BackupReport {
        users: count("users")?,
        notes: count("notes")?,
        versions: count("note_versions")?,
        sessions: count("sessions")?,
    })
}

fn create_new_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).map(drop)
}
