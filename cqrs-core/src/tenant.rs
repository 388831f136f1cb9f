//! Tenants: one deployment, many separate event stores.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::{EventStore, InMemoryEventStore};

/// The name of a tenant: 1 to [`TenantId::MAX_LEN`] characters, ASCII lowercase letters,
/// digits and `_`, starting with a letter.
///
/// The rule is strict on purpose: a tenant name becomes part of a PostgreSQL schema name
/// and of a directory name, so it may carry no quote, dot, slash, space or upper-case
/// letter (PostgreSQL would fold it), and it cannot be `..` or empty. Anything else is an
/// [`InvalidTenantId`], refused before anything is created.
///
/// # Examples
/// ```
/// use cqrs_core::TenantId;
///
/// let acme: TenantId = "acme_eu".parse()?;
/// assert_eq!(acme.as_str(), "acme_eu");
/// assert!("acme.eu".parse::<TenantId>().is_err());
/// assert!("x\"; drop schema".parse::<TenantId>().is_err());
/// # Ok::<(), cqrs_core::InvalidTenantId>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

/// A tenant name was refused: why, in [`reason`](InvalidTenantId::reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant name {name:?}: {reason}")]
pub struct InvalidTenantId {
    /// The name as given.
    pub name: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl TenantId {
    /// The longest tenant name. With a backend's prefix it stays within PostgreSQL's
    /// 63-byte identifiers.
    pub const MAX_LEN: usize = 40;

    /// Validates a tenant name.
    ///
    /// # Errors
    /// [`InvalidTenantId`] if the name is empty, longer than [`MAX_LEN`](Self::MAX_LEN),
    /// does not start with a lowercase ASCII letter, or holds anything but lowercase
    /// ASCII letters, digits and `_`.
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidTenantId> {
        let name = name.as_ref();
        let invalid = |reason| {
            Err(InvalidTenantId {
                name: name.to_owned(),
                reason,
            })
        };
        if name.is_empty() {
            return invalid("it is empty");
        }
        if name.len() > Self::MAX_LEN {
            return invalid("it is longer than 40 characters");
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return invalid("it must start with a lowercase letter (a-z)");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return invalid("only lowercase letters (a-z), digits and '_' are allowed");
        }
        Ok(TenantId(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = InvalidTenantId;

    fn from_str(s: &str) -> Result<Self, InvalidTenantId> {
        TenantId::new(s)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// What went wrong when asking [`TenantStores`] for a tenant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    /// The tenant was never created.
    ///
    /// Handling: bad input (HTTP 404 or 400); create the tenant first. Nothing was
    /// created or written.
    #[error("unknown tenant {tenant}: create it first")]
    Unknown {
        /// The tenant asked for.
        tenant: TenantId,
    },

    /// The backend failed while creating, migrating, opening or listing tenants.
    ///
    /// Handling: as [`Error::Store`](crate::Error::Store): retry later (HTTP 503).
    #[error("tenant store failure")]
    Store {
        /// The backend's error.
        #[source]
        source: crate::Error,
    },
}

impl TenantError {
    /// Wraps a store error.
    pub fn store(source: impl Into<crate::Error>) -> Self {
        TenantError::Store {
            source: source.into(),
        }
    }
}

/// One deployment, many tenants: gives each tenant an event store of its own, which
/// never sees another tenant's streams, events, snapshots or checkpoints.
///
/// Tenants are created explicitly ([`create`](Self::create), idempotent, which on
/// PostgreSQL also creates and migrates the tenant's schema); [`store`](Self::store)
/// refuses a tenant that was never created, so a typo cannot start an empty tenant.
/// Names are validated as [`TenantId`]s before anything is touched.
///
/// Implementations: [`InMemoryTenantStores`], `cqrs_sled::SledTenantStores` (a sled
/// database per tenant), `cqrs_postgres::PostgresTenantStores` (a schema per tenant and a
/// registry table).
///
/// # Examples
/// ```
/// use cqrs_core::{EventLog, InMemoryTenantStores, Position, TenantId, TenantStores};
/// use futures::TryStreamExt;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let tenants = InMemoryTenantStores::new();
/// let acme: TenantId = "acme".parse()?;
/// let store = tenants.create(&acme).await?;
/// let events: Vec<_> = store.read_all(Position::START, None).try_collect().await?;
/// assert!(events.is_empty());
/// assert!(tenants.store(&"globex".parse()?).await.is_err()); // never created
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub trait TenantStores: Send + Sync {
    /// A tenant's event store.
    type Store: EventStore + Clone + Send + Sync + 'static;

    /// Creates the tenant if it does not exist yet (and migrates its storage), and
    /// returns its store. Creating an existing tenant returns its store.
    ///
    /// # Errors
    /// [`TenantError::Store`] if the backend fails; a partly created tenant is finished
    /// by the next `create`.
    fn create(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Self::Store, TenantError>> + Send;

    /// The store of a tenant that was created.
    ///
    /// # Errors
    /// [`TenantError::Unknown`] if the tenant was never created (nothing is created);
    /// [`TenantError::Store`] if the backend fails.
    fn store(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Self::Store, TenantError>> + Send;

    /// Every tenant created so far, in name order. (A list of names, not of history:
    /// it grows with tenants, not with events.)
    ///
    /// # Errors
    /// [`TenantError::Store`] if the backend fails.
    fn tenants(&self) -> impl Future<Output = Result<Vec<TenantId>, TenantError>> + Send;
}

/// In-memory tenants, for tests: an [`InMemoryEventStore`] per tenant.
///
/// Cloning gives another handle on the same tenants.
#[derive(Debug, Clone, Default)]
pub struct InMemoryTenantStores {
    stores: Arc<Mutex<BTreeMap<TenantId, InMemoryEventStore>>>,
}

impl InMemoryTenantStores {
    /// No tenants yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn stores(&self) -> std::sync::MutexGuard<'_, BTreeMap<TenantId, InMemoryEventStore>> {
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TenantStores for InMemoryTenantStores {
    type Store = InMemoryEventStore;

    async fn create(&self, tenant: &TenantId) -> Result<InMemoryEventStore, TenantError> {
        Ok(self.stores().entry(tenant.clone()).or_default().clone())
    }

    async fn store(&self, tenant: &TenantId) -> Result<InMemoryEventStore, TenantError> {
        self.stores()
            .get(tenant)
            .cloned()
            .ok_or_else(|| TenantError::Unknown {
                tenant: tenant.clone(),
            })
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, TenantError> {
        Ok(self.stores().keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_strict() {
        for good in ["a", "acme", "acme_eu_2", &"a".repeat(TenantId::MAX_LEN)] {
            assert_eq!(TenantId::new(good).map(|t| t.to_string()), Ok(good.into()));
        }
        let long = "a".repeat(TenantId::MAX_LEN + 1);
        for bad in [
            "", "Acme", "1acme", "_acme", "acme.eu", "acme eu", "acme-eu", "ac\"me", "ac'me", "..",
            "a/b", "é", &long,
        ] {
            let refused = TenantId::new(bad).expect_err(bad);
            assert_eq!(refused.name, bad);
            assert!(refused.to_string().contains("invalid tenant name"));
        }
    }
}
