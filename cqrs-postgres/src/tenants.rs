//! Tenants on PostgreSQL: a schema per tenant and a registry of tenants.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use cqrs_core::{TenantError, TenantId, TenantStores};
use sqlx::PgPool;

use crate::migrate::lock_key;
use crate::schema::Schema;
use crate::{PostgresEventStore, PostgresEventStoreBuilder};

/// Options applied to each tenant's [`PostgresEventStoreBuilder`].
type Configure = Arc<dyn Fn(PostgresEventStoreBuilder) -> PostgresEventStoreBuilder + Send + Sync>;

/// Many tenants in one database: tenant `t`'s events, snapshots, checkpoints and inbox
/// live in the schema `PREFIX` + `t` (default `tenant_t`), created and migrated by
/// [`create`](TenantStores::create) and recorded in a registry table,
/// `REGISTRY.tenants` (default schema `cqrs_tenants`). See ADR 0030.
///
/// [`store`](TenantStores::store) looks the tenant up in the registry and refuses one
/// that is not there ([`TenantError::Unknown`]; nothing is created). Tenant names are
/// [`TenantId`]s, validated before any SQL runs, and the schema name built from them is
/// validated again as every schema name is, so a name can never break out of its
/// identifier. [`migrate`](Self::migrate) brings every registered tenant to this
/// release's schema version (run it at deployment, as [`PostgresEventStore::migrate`]).
///
/// Every tenant's store shares the one pool; each keeps its own `LISTEN` connection
/// while it has live readers.
///
/// # Examples
/// ```no_run
/// use cqrs_core::{TenantId, TenantStores};
/// use cqrs_postgres::PostgresTenantStores;
///
/// # async fn example(pool: cqrs_postgres::sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let tenants = PostgresTenantStores::new(pool);
/// tenants.migrate().await?; // the registry, and every tenant's schema
/// let acme = tenants.create(&"acme".parse::<TenantId>()?).await?;
/// assert_eq!(acme.schema(), "tenant_acme");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresTenantStores {
    pool: PgPool,
    registry: String,
    prefix: String,
    configure: Configure,
    open: Arc<Mutex<HashMap<TenantId, PostgresEventStore>>>,
}

impl fmt::Debug for PostgresTenantStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTenantStores")
            .field("registry", &self.registry)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl PostgresTenantStores {
    /// Tenants over `pool`, with the registry in the schema `cqrs_tenants` and tenant
    /// schemas named `tenant_NAME`.
    pub fn new(pool: PgPool) -> Self {
        PostgresTenantStores {
            pool,
            registry: "cqrs_tenants".to_owned(),
            prefix: "tenant_".to_owned(),
            configure: Arc::new(|builder| builder),
            open: Arc::default(),
        }
    }

    /// The schema of the registry table (default `cqrs_tenants`); validated like every
    /// schema name when first used.
    pub fn registry_schema(mut self, schema: impl Into<String>) -> Self {
        self.registry = schema.into();
        self
    }

    /// The prefix of tenant schema names (default `tenant_`). A schema name is at most 63
    /// bytes, and a tenant name at most 40, so keep it within 23.
    pub fn schema_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Options for each tenant's store (notification, read settle timeout, ...); the
    /// schema is set after them.
    pub fn configure(
        mut self,
        configure: impl Fn(PostgresEventStoreBuilder) -> PostgresEventStoreBuilder
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    fn registry(&self) -> crate::Result<Schema> {
        Schema::new(&self.registry, false)
    }

    /// The schema a tenant's store lives in (whether or not the tenant exists).
    ///
    /// # Errors
    /// [`crate::Error::InvalidSchema`] if the prefix makes an invalid schema name.
    pub fn schema_of(&self, tenant: &TenantId) -> crate::Result<String> {
        let name = format!("{}{}", self.prefix, tenant);
        Ok(Schema::new(&name, false)?.name().to_owned())
    }

    /// Creates the registry if it is missing, then migrates every registered tenant's
    /// schema. Returns how many tenants were migrated.
    ///
    /// # Errors
    /// [`crate::Error`] if the database fails or a migration does.
    pub async fn migrate(&self) -> crate::Result<usize> {
        self.ensure_registry().await?;
        let registry = self.registry()?;
        let schemas: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT schema_name FROM {}.tenants ORDER BY name",
            registry.quoted()
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db("the tenant registry"))?;
        for schema in &schemas {
            self.build(schema)?.migrate().await?;
        }
        Ok(schemas.len())
    }

    async fn ensure_registry(&self) -> crate::Result<()> {
        let registry = self.registry()?;
        let mut tx = self.pool.begin().await.map_err(db("the tenant registry"))?;
        // Concurrent first starts would race on CREATE ... IF NOT EXISTS.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(&registry, "tenant registry"))
            .execute(&mut *tx)
            .await
            .map_err(db("the tenant registry"))?;
        let quoted = registry.quoted();
        for statement in [
            format!("CREATE SCHEMA IF NOT EXISTS {quoted}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {quoted}.tenants (\
                 name text PRIMARY KEY, \
                 schema_name text NOT NULL UNIQUE, \
                 created_at timestamptz NOT NULL DEFAULT now())"
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(db("the tenant registry"))?;
        }
        tx.commit().await.map_err(db("the tenant registry"))
    }

    fn build(&self, schema: &str) -> crate::Result<PostgresEventStore> {
        (self.configure)(PostgresEventStore::builder(self.pool.clone()))
            .schema(schema)
            .build()
    }

    fn cached(&self, tenant: &TenantId) -> Option<PostgresEventStore> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(tenant).cloned()
    }

    fn keep(&self, tenant: &TenantId, store: &PostgresEventStore) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.entry(tenant.clone()).or_insert_with(|| store.clone());
    }

    async fn create_tenant(&self, tenant: &TenantId) -> crate::Result<PostgresEventStore> {
        let schema = self.schema_of(tenant)?;
        let store = self.build(&schema)?;
        self.ensure_registry().await?;
        // Migrate first, register after: a tenant in the registry always has its tables,
        // and a create that failed half-way is finished by the next one.
        store.migrate().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {}.tenants (name, schema_name) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
            self.registry()?.quoted()
        )))
        .bind(tenant.as_str())
        .bind(&schema)
        .execute(&self.pool)
        .await
        .map_err(db("the tenant registry"))?;
        Ok(store)
    }

    async fn registered_schema(&self, tenant: &TenantId) -> crate::Result<Option<String>> {
        let registry = self.registry()?;
        // No registry table yet: no tenant was ever created.
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{}.tenants", registry.quoted()))
            .fetch_one(&self.pool)
            .await
            .map_err(db("the tenant registry"))?;
        if !exists {
            return Ok(None);
        }
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT schema_name FROM {}.tenants WHERE name = $1",
            registry.quoted()
        )))
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("the tenant registry"))
    }
}

impl TenantStores for PostgresTenantStores {
    type Store = PostgresEventStore;

    async fn create(&self, tenant: &TenantId) -> Result<PostgresEventStore, TenantError> {
        if let Some(store) = self.cached(tenant) {
            return Ok(store);
        }
        let store = self
            .create_tenant(tenant)
            .await
            .map_err(TenantError::store)?;
        self.keep(tenant, &store);
        Ok(store)
    }

    async fn store(&self, tenant: &TenantId) -> Result<PostgresEventStore, TenantError> {
        if let Some(store) = self.cached(tenant) {
            return Ok(store);
        }
        let schema = self
            .registered_schema(tenant)
            .await
            .map_err(TenantError::store)?
            .ok_or_else(|| TenantError::Unknown {
                tenant: tenant.clone(),
            })?;
        let store = self.build(&schema).map_err(TenantError::store)?;
        self.keep(tenant, &store);
        Ok(store)
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, TenantError> {
        let registry = self.registry().map_err(TenantError::store)?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{}.tenants", registry.quoted()))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| TenantError::store(db("reading the tenant registry")(e)))?;
        if !exists {
            return Ok(Vec::new());
        }
        let names: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM {}.tenants ORDER BY name",
            registry.quoted()
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| TenantError::store(db("reading the tenant registry")(e)))?;
        // A registry row that is not a valid name was not written by this code: corrupt.
        names
            .into_iter()
            .map(|name| {
                TenantId::new(&name).map_err(|e| {
                    TenantError::store(cqrs_core::Error::corrupt(
                        format!("{}.tenants", registry.name()),
                        e.to_string(),
                    ))
                })
            })
            .collect()
    }
}

/// Wraps a driver error of a registry operation.
fn db(operation: &'static str) -> impl Fn(sqlx::Error) -> crate::Error {
    move |source| crate::Error::Database { operation, source }
}
