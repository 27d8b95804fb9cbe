//! The state every handler shares.

use std::ops::Deref;
use std::sync::Arc;

use crate::auth::{Hasher, VerifiedTokens};
use crate::keys::Keys;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::throttle::Throttle;

/// Token settings, in seconds.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub access_ttl: u64,
    pub refresh_ttl: u64,
    pub leeway: u64,
}

pub struct Inner {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub hasher: Hasher,
    pub verified: VerifiedTokens,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub async fn new(settings: Settings, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let now = crate::now();
        let keys = Keys::load(store.as_ref(), now, settings.access_ttl).await?;
        let sessions = Sessions::new(store.as_ref()).await?;
        let hasher = tokio::task::spawn_blocking(Hasher::new).await??;
        Ok(Self(Arc::new(Inner {
            settings,
            store,
            keys,
            sessions,
            throttle: Throttle::default(),
            hasher,
            verified: VerifiedTokens::default(),
        })))
    }

    /// One round of background upkeep: revocations and key rotations made by
    /// other processes, and pruning of what no longer matters.
    pub async fn refresh_from_store(&self) -> anyhow::Result<()> {
        let now = crate::now();
        let store = self.store.as_ref();
        self.sessions.poll(store, now).await?;
        if self.keys.stale(store).await? {
            self.keys
                .reload(store, now, self.settings.access_ttl)
                .await?;
            self.verified.clear();
            tracing::info!(kid = %self.keys.current().kid, "signing keys reloaded");
        }
        Ok(())
    }

    /// Slower upkeep: drop retired keys and sessions past their time.
    pub async fn prune(&self) -> anyhow::Result<()> {
        let now = crate::now();
        self.sessions.prune(now, self.settings.access_ttl);
        // Expired tokens leave the cache too (they would fail the time check anyway).
        self.verified.clear();
        self.keys
            .reload(self.store.as_ref(), now, self.settings.access_ttl)
            .await
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
