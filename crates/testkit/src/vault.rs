//! [`MemoryVault`]: the keychain for tests, in memory, that a test can look
//! into, tamper with, or switch off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use latchkey_client::{Error, Result, Vault};

/// An in-memory vault for tests; clones share contents. It can be made
/// unavailable to simulate a keychain that goes away.
#[derive(Debug, Clone, Default)]
pub struct MemoryVault {
    inner: Arc<Mutex<(HashMap<String, String>, bool)>>,
}

impl MemoryVault {
    /// An empty vault.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail with `keychain_unavailable` (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1 = unavailable;
    }

    /// A raw look at what is stored (tests check nothing leaks).
    pub fn raw(&self, account: &str) -> Option<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(account)
            .cloned()
    }

    /// Every account stored.
    pub fn accounts(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .keys()
            .cloned()
            .collect()
    }

    /// Overwrites an entry behind the engine's back (tests tamper with it).
    pub fn put_raw(&self, account: &str, value: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .insert(account.into(), value.into());
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, String>) -> T) -> Result<T> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1 {
            return Err(Error::KeychainUnavailable {
                detail: "the test keychain is switched off".into(),
            });
        }
        Ok(f(&mut g.0))
    }
}

impl Vault for MemoryVault {
    fn load(&self, account: &str) -> Result<Option<String>> {
        self.with(|m| m.get(account).cloned())
    }

    fn store(&self, account: &str, secret: &str) -> Result<()> {
        self.with(|m| {
            m.insert(account.into(), secret.into());
        })
    }

    fn delete(&self, account: &str) -> Result<()> {
        self.with(|m| {
            m.remove(account);
        })
    }

    fn ready_to_store(&self) -> Result<()> {
        self.with(|_| ())
    }
}
