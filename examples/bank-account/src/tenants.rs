//! Tenants: `--tenant NAME` runs any command on that tenant's store; `bank tenants
//! create|list|migrate` manages them. On sled, the tenants of `sled:PATH` are databases
//! under `PATH.tenants/`; on PostgreSQL, the tenants of `?schema=S` are schemas `S_NAME`,
//! registered in the table `S.tenants`.

use std::path::Path;

use cqrs_core::{TenantError, TenantId, TenantStores};
use cqrs_postgres::{PostgresEventStore, PostgresTenantStores};
use cqrs_sled::{DamagedLog, SledConfig, SledEventStore, SledTenantStores};

use crate::error::{BankError, Result};

/// The tenants of one store URL.
#[derive(Debug)]
pub enum Tenants {
    /// `sled:PATH`: a database per tenant under `PATH.tenants/`.
    Sled(SledTenantStores),
    /// `postgres://…`: a schema per tenant, with a registry.
    Postgres(PostgresTenantStores),
}

impl Tenants {
    /// The tenants of `url` (`sled:PATH` or `postgres://…?schema=S`); `memory:` has
    /// none (it is gone when the process ends).
    pub async fn of(url: &str) -> Result<Tenants> {
        if url.starts_with("postgres") {
            let (url, schema) = crate::read_model::split_schema(url);
            let pool = PostgresEventStore::connect_pool(&url, 2).await;
            return Ok(Tenants::Postgres(postgres(
                pool.map_err(BankError::store)?,
                &schema,
            )));
        }
        match url.strip_prefix("sled:") {
            Some(path) if !path.is_empty() => Ok(Tenants::Sled(sled(path, DamagedLog::Refuse))),
            _ => Err(BankError::InvalidInput(
                format!("{url:?} has no tenants: use sled:<path> or postgres://…").into(),
            )),
        }
    }

    /// Creates a tenant (and migrates its store); creating one that exists does nothing.
    pub async fn create(&self, tenant: &TenantId) -> Result<()> {
        match self {
            Tenants::Sled(tenants) => tenants.create(tenant).await.map(drop),
            Tenants::Postgres(tenants) => tenants.create(tenant).await.map(drop),
        }
        .map_err(tenant_error)
    }

    /// Every tenant, in name order.
    pub async fn list(&self) -> Result<Vec<TenantId>> {
        match self {
            Tenants::Sled(tenants) => tenants.tenants().await,
            Tenants::Postgres(tenants) => tenants.tenants().await,
        }
        .map_err(tenant_error)
    }

    /// Migrates every tenant's store to this release (PostgreSQL; a sled database
    /// migrates when it opens). Returns how many tenants there are.
    pub async fn migrate(&self) -> Result<usize> {
        match self {
            Tenants::Sled(tenants) => Ok(tenants.tenants().await.map_err(tenant_error)?.len()),
            Tenants::Postgres(tenants) => tenants.migrate().await.map_err(BankError::store),
        }
    }
}

/// The tenants of `sled:PATH`.
fn sled(path: &str, damaged: DamagedLog) -> SledTenantStores {
    let config = SledConfig::temporary().on_damaged_log(damaged);
    SledTenantStores::new(format!("{path}.tenants")).with_config(config)
}

/// The tenants of the PostgreSQL schema `schema`.
fn postgres(pool: cqrs_postgres::sqlx::PgPool, schema: &str) -> PostgresTenantStores {
    let tenants = PostgresTenantStores::new(pool).registry_schema(schema);
    tenants.schema_prefix(format!("{schema}_"))
}

/// A tenant's sled store (which must have been created).
pub(crate) async fn sled_store(
    path: &Path,
    tenant: &TenantId,
    damaged: DamagedLog,
) -> Result<SledEventStore> {
    let tenants = sled(&path.to_string_lossy(), damaged);
    tenants.store(tenant).await.map_err(tenant_error)
}

/// The schema of a tenant of the PostgreSQL schema `schema` (which must have been created).
pub(crate) async fn postgres_schema(
    pool: &cqrs_postgres::sqlx::PgPool,
    schema: &str,
    tenant: &TenantId,
) -> Result<String> {
    let store = postgres(pool.clone(), schema).store(tenant).await;
    Ok(store.map_err(tenant_error)?.schema().to_owned())
}

/// An unknown tenant is bad input (exit 2); a failing backend a store failure.
fn tenant_error(e: TenantError) -> BankError {
    match e {
        TenantError::Unknown { tenant } => BankError::InvalidInput(
            format!("unknown tenant {tenant}: create it first with `bank tenants create {tenant}`")
                .into(),
        ),
        e => BankError::store(e),
    }
}
