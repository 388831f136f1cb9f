//! The store conformance suite of `cqrs-core`, run against `SledEventStore`.

mod flushed {
    async fn fresh_store() -> Option<cqrs_sled::SledEventStore> {
        Some(cqrs_sled::SledEventStore::temporary().expect("a temporary sled store"))
    }

    cqrs_core::store_conformance_tests!(fresh_store);
}

mod buffered {
    async fn fresh_store() -> Option<cqrs_sled::SledEventStore> {
        let config = cqrs_sled::SledConfig::temporary().durability(cqrs_sled::Durability::Buffered);
        Some(config.open().expect("a temporary sled store"))
    }

    cqrs_core::store_conformance_tests!(fresh_store);
}
