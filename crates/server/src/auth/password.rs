//! Password hashing: Argon2id, off the async runtime and bounded, so a
//! flood of sign-ins cannot take the machine's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use tokio::sync::Semaphore;

use super::issue::random_token;
use crate::error::{Error, Result};

/// Argon2id hashing for sign-ins: a few hashes run at once, and only so many
/// sign-ins may wait for them; past that a sign-in is told to come back
/// ([`HasherBusy`]) rather than queued without limit.
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Sign-ins waiting for, or running in, the hasher.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    /// Verified against when the username is unknown, so that costs a hash too.
    dummy: String,
}

/// Too many sign-ins already wait for the hasher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many sign-ins wait for the password hasher")]
pub struct HasherBusy;

/// A place in the hasher's queue; given back when dropped.
pub struct HashSlot {
    queued: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
    dummy: String,
}

impl Drop for HashSlot {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Hashes that run at once, per CPU.
const HASHES_PER_CPU: usize = 2;
/// Sign-ins that may wait, per hash that may run, and at least: a waiting
/// sign-in costs a task, not Argon2's memory, and 64 of them are through
/// in well under a second with 4 hashes at a time.
const QUEUED_PER_HASH: usize = 16;
const MIN_QUEUED: usize = 64;

impl Hasher {
    /// A hasher letting `max_queued` sign-ins wait at once (default:
    /// `QUEUED_PER_HASH` per hash that may run, at least `MIN_QUEUED`).
    /// Blocking (it hashes its dummy password): call off the runtime.
    pub fn new(max_queued: Option<usize>) -> Result<Self> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) * HASHES_PER_CPU;
        Ok(Self {
            permits: Arc::new(Semaphore::new(parallel)),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: max_queued
                .unwrap_or((parallel * QUEUED_PER_HASH).max(MIN_QUEUED))
                .max(1),
            dummy: hash_password_blocking(&random_token())?,
        })
    }

    /// Takes a place in the queue, if there is one.
    pub fn enter(&self) -> Result<HashSlot, HasherBusy> {
        self.queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_queued).then_some(n + 1)
            })
            .map_err(|_| HasherBusy)?;
        Ok(HashSlot {
            queued: self.queued.clone(),
            permits: self.permits.clone(),
            dummy: self.dummy.clone(),
        })
    }
}

impl HashSlot {
    /// Checks `password` against `hash`, or against the dummy hash when
    /// there is no user, taking the same time either way. The place in the
    /// queue and the hashing permit are held until the hash is done, even
    /// if the request is dropped meanwhile.
    pub async fn verify(self, password: String, hash: Option<String>) -> Result<bool> {
        let permit = self.permits.clone().acquire_owned().await?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        let ok = tokio::task::spawn_blocking(move || {
            let _held = (permit, self);
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(ok && known)
    }
}

impl HashSlot {
    /// Hashes a new `password` with Argon2id, holding the place in the
    /// queue and a hashing permit until done, like [`HashSlot::verify`].
    pub async fn hash(self, password: String) -> Result<String> {
        let permit = self.permits.clone().acquire_owned().await?;
        tokio::task::spawn_blocking(move || {
            let _held = (permit, self);
            hash_password_blocking(&password)
        })
        .await?
    }
}

/// An Argon2id PHC string for `password` (blocking: call off the runtime).
pub fn hash_password_blocking(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(Error::Hash)
}

/// [`hash_password_blocking`], off the runtime.
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&password)).await?
}

/// Every sign-in hashes with 19 MiB of Argon2 memory. glibc raises its mmap
/// threshold to the size of each large block freed, so after the first
/// sign-in those blocks came from its heap arenas, which kept them: 200
/// sign-ins left the server holding over 1 GiB. A fixed threshold (setting
/// one turns the raising off) keeps blocks of 1 MiB and more on mmap, given
/// back to the system as soon as they are freed. Call it before any other
/// thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn give_large_blocks_back() {
    // SAFETY: sets one allocator parameter, before any other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
}

/// Nothing to do off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_large_blocks_back() {}
