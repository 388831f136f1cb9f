//! Tenants on sled: the tenant conformance cases, and names that must not reach the disk.

use cqrs_core::conformance::tenants;
use cqrs_core::{TenantId, TenantStores};
use cqrs_sled::SledTenantStores;

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("a valid tenant name")
}

#[tokio::test]
async fn tenants_are_isolated() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stores = SledTenantStores::new(dir.path().join("tenants"));
    tenants::tenants_are_isolated(stores.clone(), tenant("acme"), tenant("globex")).await;
    // A second process (here: a second handle set) finds the tenants on disk.
    drop(stores);
    let reopened = SledTenantStores::new(dir.path().join("tenants"));
    assert_eq!(
        reopened.tenants().await.expect("tenants"),
        vec![tenant("acme"), tenant("globex")]
    );
}

#[tokio::test]
async fn unknown_tenants_are_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("tenants");
    let stores = SledTenantStores::new(&root);
    tenants::unknown_tenants_are_refused(stores.clone(), tenant("initech")).await;
    assert!(
        !root.join("initech").exists(),
        "no directory for an unknown tenant"
    );
    // Stray entries in the root are not tenants.
    std::fs::create_dir_all(root.join("Not.A.Tenant")).expect("mkdir");
    std::fs::write(root.join("notes"), b"x").expect("write");
    assert!(stores.tenants().await.expect("tenants").is_empty());
}
