//! The engine's non-secret state between runs, in `<data_dir>/engine.json`:
//! the accounts signed in on this device and the one restored at start,
//! the signed-out sessions whose revocation is still owed, and the device
//! name the user chose. Changed in memory, then written whole and
//! atomically (a temporary file, fsync, rename) on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::blocking::{blocking, lock};
use crate::error::{Error, Result};

/// The file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PrefsFile {
    /// The account restored at start: (server, username).
    last_account: Option<(String, String)>,
    /// Every account signed in on this device, in the order they signed
    /// in: (server, username). Each keeps its session in a keychain entry
    /// of its own. Missing in files of one-account versions: the last
    /// account alone.
    #[serde(default)]
    accounts: Vec<(String, String)>,
    /// Accounts signed out while offline whose refresh token still awaits
    /// revocation on the server.
    #[serde(default)]
    pending_revocations: Vec<String>,
    /// The name this device signs in with, if the user chose one (else the
    /// host name).
    #[serde(default)]
    device_name: Option<String>,
}

/// `engine.json`, in memory and on disk.
pub(crate) struct Prefs {
    dir: PathBuf,
    data: Arc<Mutex<PrefsFile>>,
    /// Held by each write of the file, which takes the data as it is then:
    /// the last write holds the latest change.
    writing: Arc<Mutex<()>>,
}

impl Prefs {
    /// Reads the prefs in `dir` (blocking); none, or a damaged file, gives
    /// the defaults.
    pub(crate) fn load(dir: &Path) -> Self {
        let mut data: PrefsFile = std::fs::read(path(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if data.accounts.is_empty()
            && let Some(last) = &data.last_account
        {
            data.accounts.push(last.clone());
        }
        Self {
            dir: dir.to_owned(),
            data: Arc::new(Mutex::new(data)),
            writing: Arc::default(),
        }
    }

    pub(crate) fn last_account(&self) -> Option<(String, String)> {
        lock(&self.data).last_account.clone()
    }

    /// The accounts signed in on this device, oldest first.
    pub(crate) fn accounts(&self) -> Vec<(String, String)> {
        lock(&self.data).accounts.clone()
    }

    /// `(server, username)` signed in on this device (now the active one).
    pub(crate) fn add_account(&self, server: String, username: String) {
        let mut data = lock(&self.data);
        let account = (server, username);
        if !data.accounts.contains(&account) {
            data.accounts.push(account.clone());
        }
        data.last_account = Some(account);
    }

    /// `(server, username)` is not signed in on this device any more.
    pub(crate) fn remove_account(&self, server: &str, username: &str) {
        lock(&self.data)
            .accounts
            .retain(|(s, u)| (s.as_str(), u.as_str()) != (server, username));
    }

    pub(crate) fn device_name(&self) -> Option<String> {
        lock(&self.data).device_name.clone()
    }

    pub(crate) fn set_device_name(&self, name: Option<String>) {
        lock(&self.data).device_name = name;
    }

    pub(crate) fn pending_revocations(&self) -> Vec<String> {
        lock(&self.data).pending_revocations.clone()
    }

    pub(crate) fn has_pending_revocations(&self) -> bool {
        !lock(&self.data).pending_revocations.is_empty()
    }

    pub(crate) fn add_revocation(&self, key: String) {
        let mut data = lock(&self.data);
        if !data.pending_revocations.contains(&key) {
            data.pending_revocations.push(key);
        }
    }

    /// Takes `done` off the list; true when none are left.
    pub(crate) fn remove_revocations(&self, done: &[String]) -> bool {
        let mut data = lock(&self.data);
        data.pending_revocations.retain(|a| !done.contains(a));
        data.pending_revocations.is_empty()
    }

    /// Writes the prefs as they are now.
    pub(crate) async fn save(&self) -> Result<()> {
        let (dir, data, writing) = (self.dir.clone(), self.data.clone(), self.writing.clone());
        blocking(move || {
            let _writing = lock(&writing);
            let snapshot = lock(&data).clone();
            write(&dir, &snapshot)
        })
        .await
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join("engine.json")
}

fn write(dir: &Path, prefs: &PrefsFile) -> Result<()> {
    let tmp = dir.join("engine.json.tmp");
    let json = serde_json::to_vec_pretty(prefs).map_err(|e| Error::Storage(e.to_string()))?;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    Ok(())
}
