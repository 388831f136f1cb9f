//! Tenants on sled: a database of its own for each tenant, under one root directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use cqrs_core::{TenantError, TenantId, TenantStores};

use crate::{OpenError, SledConfig, SledEventStore};

/// Many tenants in one process: tenant `t`'s events live in the sled database
/// `ROOT/t`, so no read path of one tenant can reach another's keys (ADR 0030).
///
/// A tenant exists when its directory does: [`create`](TenantStores::create) makes and
/// opens it, [`store`](TenantStores::store) opens an existing one and refuses any other
/// ([`TenantError::Unknown`], nothing created). Opened stores are kept, so every handle
/// of a tenant in this process shares one database (sled allows one open per process).
/// Names are [`TenantId`]s, so they cannot climb out of the root (`..`, `/`).
///
/// Each tenant's database is opened with the options of the [`SledConfig`] given to
/// [`with_config`](Self::with_config) (its path is replaced); mind that each open
/// database has its own page cache.
///
/// # Examples
/// ```
/// use cqrs_core::{TenantId, TenantStores};
/// use cqrs_sled::SledTenantStores;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir()?;
/// let tenants = SledTenantStores::new(dir.path());
/// let acme = tenants.create(&"acme".parse::<TenantId>()?).await?;
/// assert!(dir.path().join("acme").is_dir());
/// assert_eq!(tenants.tenants().await?, vec!["acme".parse::<TenantId>()?]);
/// # drop(acme);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SledTenantStores {
    root: PathBuf,
    config: SledConfig,
    open: Arc<Mutex<HashMap<TenantId, SledEventStore>>>,
}

impl SledTenantStores {
    /// Tenants under the directory `root` (created with the first tenant), each opened
    /// with [`SledConfig`]'s defaults.
    pub fn new(root: impl AsRef<Path>) -> Self {
        SledTenantStores {
            root: root.as_ref().to_owned(),
            config: SledConfig::temporary(),
            open: Arc::default(),
        }
    }

    /// Opens each tenant's database with these options (durability, cache, damaged-log
    /// choice); their path is ignored.
    pub fn with_config(mut self, config: SledConfig) -> Self {
        self.config = config;
        self
    }

    /// The directory of a tenant's database.
    pub fn path(&self, tenant: &TenantId) -> PathBuf {
        self.root.join(tenant.as_str())
    }

    fn open(&self, tenant: &TenantId, create: bool) -> Result<SledEventStore, TenantError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(store) = open.get(tenant) {
            return Ok(store.clone());
        }
        let path = self.path(tenant);
        if !create && !path.is_dir() {
            return Err(TenantError::Unknown {
                tenant: tenant.clone(),
            });
        }
        let mut config = self.config.clone().create_if_missing(true);
        config.path = Some(path);
        let store = match config.open() {
            Ok(store) => store,
            Err(OpenError::Missing { .. }) => {
                return Err(TenantError::Unknown {
                    tenant: tenant.clone(),
                });
            }
            Err(e) => return Err(TenantError::store(cqrs_core::Error::store(e))),
        };
        open.insert(tenant.clone(), store.clone());
        Ok(store)
    }
}

impl TenantStores for SledTenantStores {
    type Store = SledEventStore;

    async fn create(&self, tenant: &TenantId) -> Result<SledEventStore, TenantError> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| TenantError::store(cqrs_core::Error::store(e)))?;
        self.open(tenant, true)
    }

    async fn store(&self, tenant: &TenantId) -> Result<SledEventStore, TenantError> {
        self.open(tenant, false)
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, TenantError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TenantError::store(cqrs_core::Error::store(e))),
        };
        let mut tenants = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| TenantError::store(cqrs_core::Error::store(e)))?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            // Anything else in the root (a file, a name no tenant can have) is not a tenant.
            let name = entry.file_name();
            if let (true, Some(Ok(tenant))) = (is_dir, name.to_str().map(TenantId::new)) {
                tenants.push(tenant);
            }
        }
        tenants.sort();
        Ok(tenants)
    }
}
