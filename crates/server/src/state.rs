//! The state every handler shares.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::password::Hasher;
use crate::auth::verified_tokens::VerifiedTokens;
use crate::error::Result;
use crate::keys::Keys;
use crate::live::Live;
use crate::proxy::TrustedProxies;
use crate::sessions::Sessions;
use crate::store::{self, Store};
use crate::throttle::Throttle;

/// What `serve` was told: token lifetimes (seconds), proxies, bounds.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub access_ttl: u64,
    pub refresh_ttl: u64,
    pub leeway: u64,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// How many sign-ins may wait for the hasher; None: the default.
    pub hash_queue: Option<usize>,
    /// The longest a live-updates stream stays silent before a `: ping`.
    pub events_ping: Duration,
}

/// What [`AppState`] holds.
pub struct Inner {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub hasher: Hasher,
    pub verified: VerifiedTokens,
    /// What the live-updates streams listen on.
    pub live: Arc<Live>,
}

/// The state every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Loads the signing keys and the revocation cursor from `store`, and
    /// makes the password hasher.
    pub async fn new(settings: Settings, store: Arc<dyn Store>) -> Result<Self> {
        let now = crate::clock::now();
        let keys = Keys::load(store.as_ref(), now, settings.access_ttl).await?;
        let live = Arc::new(Live::new(store.as_ref()).await?);
        let sessions = Sessions::new(store.as_ref(), live.clone()).await?;
        let queue = settings.hash_queue;
        let hasher = tokio::task::spawn_blocking(move || Hasher::new(queue)).await??;
        Ok(Self(Arc::new(Inner {
            settings,
            throttle: Throttle::new(store.clone()),
            store,
            keys,
            sessions,
            hasher,
            verified: VerifiedTokens::default(),
            live,
        })))
    }

    /// One round of background upkeep: revocations, key rotations and
    /// pushes made by other processes.
    pub async fn refresh_from_store(&self) -> store::Result<()> {
        let now = crate::clock::now();
        let store = self.store.as_ref();
        self.sessions.poll(store, now).await?;
        self.live.poll(store).await?;
        if self.keys.stale(store).await? {
            self.keys
                .reload(store, now, self.settings.access_ttl)
                .await?;
            self.verified.clear();
            tracing::info!(kid = %self.keys.current().kid, "signing keys reloaded");
        }
        Ok(())
    }

    /// Slower upkeep: drop retired keys, and cached sessions, tokens and
    /// throttling windows past their time.
    pub async fn prune(&self) -> store::Result<()> {
        let now = crate::clock::now();
        self.sessions.prune(now, self.settings.access_ttl);
        self.verified.prune(now, self.settings.leeway);
        self.throttle.prune(now).await?;
        self.keys
            .reload(self.store.as_ref(), now, self.settings.access_ttl)
            .await
    }

    /// Deletes the op results older than the refresh-token lifetime, in
    /// batches; returns how many went. The session that sent such an op has
    /// ended, so its resend can only come from a client that kept it queued
    /// past that: it is then applied as a new op, which conflicts (its base
    /// rev is gone) and keeps its text in a conflict copy.
    pub async fn prune_ops(&self, now: i64) -> store::Result<usize> {
        let lifetime = i64::try_from(self.settings.refresh_ttl).unwrap_or(i64::MAX);
        let before = now.saturating_sub(lifetime);
        let mut total = 0;
        loop {
            let n = self.store.prune_ops(before, OP_PRUNE_BATCH).await?;
            total += n;
            if n < OP_PRUNE_BATCH {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Op results deleted per transaction when pruning, so that pushes wait
/// at most one short batch.
pub const OP_PRUNE_BATCH: usize = 1_000;

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
