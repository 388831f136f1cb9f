//! Tenants on the in-memory store: the tenant conformance cases.

use cqrs_core::conformance::tenants;
use cqrs_core::{InMemoryTenantStores, TenantId};

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("a valid tenant name")
}

#[tokio::test]
async fn tenants_are_isolated() {
    tenants::tenants_are_isolated(
        InMemoryTenantStores::new(),
        tenant("acme"),
        tenant("globex"),
    )
    .await;
}

#[tokio::test]
async fn unknown_tenants_are_refused() {
    tenants::unknown_tenants_are_refused(InMemoryTenantStores::new(), tenant("initech")).await;
}
