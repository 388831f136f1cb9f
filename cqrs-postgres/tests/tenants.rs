//! Tenants on PostgreSQL: the tenant conformance cases, the registry, and `migrate` of
//! every tenant. Each test uses a registry schema and a schema prefix of its own, and
//! drops every schema it made, also when it fails.

mod common;

use common::{drop_schema_blocking, pool, schema_name, server_available};
use cqrs_core::conformance::tenants;
use cqrs_core::{TenantError, TenantId, TenantStores};
use cqrs_postgres::PostgresTenantStores;
use cqrs_postgres::sqlx::{self, PgPool};

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("a valid tenant name")
}

/// The test's registry schema and every tenant schema under its prefix, dropped on drop.
struct Schemas {
    registry: String,
    prefix: String,
    pool: PgPool,
}

impl Schemas {
    async fn new() -> Option<Schemas> {
        if !server_available().await {
            return None;
        }
        let registry = schema_name();
        let prefix = format!("{registry}_");
        Some(Schemas {
            registry,
            prefix,
            pool: pool(4).await,
        })
    }

    fn tenants(&self) -> PostgresTenantStores {
        PostgresTenantStores::new(self.pool.clone())
            .registry_schema(&self.registry)
            .schema_prefix(&self.prefix)
    }

    /// The schemas that exist under the test's prefix.
    async fn tenant_schemas(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1) \
             AND nspname <> $2 ORDER BY 1",
        )
        .bind(&self.prefix)
        .bind(&self.registry)
        .fetch_all(&self.pool)
        .await
        .expect("list schemas")
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        // Tenant schemas are named after the registry's (a prefix of it), so both go.
        let prefix = self.prefix.clone();
        let names = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let pool = pool(1).await;
                sqlx::query_scalar::<_, String>(
                    "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
                )
                .bind(prefix)
                .fetch_all(&pool)
                .await
                .unwrap_or_default()
            })
        })
        .join()
        .unwrap_or_default();
        for name in names {
            drop_schema_blocking(&name);
        }
        drop_schema_blocking(&self.registry);
    }
}

#[tokio::test]
async fn tenants_are_isolated() {
    let Some(schemas) = Schemas::new().await else {
        return;
    };
    tenants::tenants_are_isolated(schemas.tenants(), tenant("acme"), tenant("globex")).await;
    assert_eq!(
        schemas.tenant_schemas().await,
        vec![
            format!("{}acme", schemas.prefix),
            format!("{}globex", schemas.prefix)
        ],
        "a schema per tenant"
    );
    // Another process (a fresh handle) finds both in the registry.
    let fresh = schemas.tenants();
    assert_eq!(
        fresh.tenants().await.expect("tenants"),
        vec![tenant("acme"), tenant("globex")]
    );
    assert_eq!(fresh.migrate().await.expect("migrate every tenant"), 2);
}

#[tokio::test]
async fn unknown_tenants_are_refused_and_nothing_is_created() {
    let Some(schemas) = Schemas::new().await else {
        return;
    };
    // Before any tenant exists there is no registry table either.
    tenants::unknown_tenants_are_refused(schemas.tenants(), tenant("initech")).await;
    schemas
        .tenants()
        .create(&tenant("acme"))
        .await
        .expect("create");
    tenants::unknown_tenants_are_refused(schemas.tenants(), tenant("initech")).await;
    assert_eq!(
        schemas.tenant_schemas().await,
        vec![format!("{}acme", schemas.prefix)],
        "no schema for the unknown tenant"
    );
}

#[tokio::test]
async fn a_prefix_that_makes_a_bad_schema_name_is_refused_before_any_sql() {
    let Some(schemas) = Schemas::new().await else {
        return;
    };
    let bad = schemas
        .tenants()
        .schema_prefix("x\"; DROP SCHEMA public; --");
    match bad.create(&tenant("acme")).await {
        Err(TenantError::Store { source }) => assert!(
            format!("{:?}", source).contains("InvalidSchema"),
            "an invalid schema name, got {source:?}"
        ),
        other => panic!("an invalid prefix must be refused, got {other:?}"),
    }
    assert!(schemas.tenant_schemas().await.is_empty(), "nothing created");
    let exists: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(&schemas.registry)
        .fetch_one(&schemas.pool)
        .await
        .expect("query");
    assert!(!exists, "not even the registry");
}

/// A tenant's store deletes and restores streams in its own schema: the same stream of
/// another tenant is untouched, and the tenant's appends see the tombstone.
#[tokio::test]
async fn tenant_stores_delete_and_restore_streams_apart() {
    use cqrs_core::{Error, EventData, EventLog, ExpectedVersion, StreamId, StreamLifecycle};
    use futures::TryStreamExt;

    let Some(schemas) = Schemas::new().await else {
        return;
    };
    let tenants = schemas.tenants();
    let acme = tenants.create(&tenant("acme")).await.expect("create");
    let globex = tenants.create(&tenant("globex")).await.expect("create");
    let s = StreamId::new("account", "1").expect("a stream id");
    let opened = || EventData::new("Opened", b"{}".to_vec());
    for store in [&acme, &globex] {
        store
            .append(&s, ExpectedVersion::NoStream, vec![opened(), opened()])
            .await
            .expect("append");
    }
    let archive: Vec<_> = acme.read_stream(&s, 1).try_collect().await.expect("read");
    let tombstone = acme
        .delete_stream(&s, ExpectedVersion::Exact(2))
        .await
        .expect("delete");
    assert_eq!(tombstone.version, 3);
    // The registry hands out the same schema: the stream is deleted there too.
    let again = tenants.store(&tenant("acme")).await.expect("the tenant");
    match again.append(&s, ExpectedVersion::Any, vec![opened()]).await {
        Err(Error::StreamDeleted { version: 3, .. }) => {}
        other => panic!("the tenant's stream is deleted, got {other:?}"),
    }
    globex
        .append(&s, ExpectedVersion::Exact(2), vec![opened()])
        .await
        .expect("the other tenant's stream lives on");
    assert_eq!(
        acme.restore_stream(&s, archive.clone())
            .await
            .expect("restore"),
        2
    );
    let restored: Vec<_> = acme.read_stream(&s, 1).try_collect().await.expect("read");
    assert_eq!(restored, archive);
}
