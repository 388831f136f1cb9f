//! The store conformance suite of `cqrs-core`, run against `SledEventStore`.

/// Damages a stream's snapshot record below the API: 5 bytes cannot be a snapshot record
/// (version, schema version, payload).
async fn damage_snapshot(store: cqrs_sled::SledEventStore, stream: cqrs_core::StreamId) -> bool {
    store
        .put_raw_snapshot(&stream, b"\x07junk")
        .expect("write a raw snapshot record");
    true
}

mod flushed {
    async fn fresh_store() -> Option<cqrs_sled::SledEventStore> {
        Some(cqrs_sled::SledEventStore::temporary().expect("a temporary sled store"))
    }

    cqrs_core::store_conformance_tests!(fresh_store, damage_snapshot = super::damage_snapshot);

    /// Positions are handed out by the single writer as it commits, and made readable as
    /// a watermark after the flush: commit order is position order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commit_order_is_position_order() {
        let store = fresh_store().await.expect("a temporary sled store");
        cqrs_core::conformance::reads_are_dense_prefixes(store).await;
    }
}

mod buffered {
    async fn fresh_store() -> Option<cqrs_sled::SledEventStore> {
        let config = cqrs_sled::SledConfig::temporary().durability(cqrs_sled::Durability::Buffered);
        Some(config.open().expect("a temporary sled store"))
    }

    cqrs_core::store_conformance_tests!(fresh_store, damage_snapshot = super::damage_snapshot);

    /// Positions are handed out by the single writer as it commits, and made readable as
    /// a watermark after the flush: commit order is position order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commit_order_is_position_order() {
        let store = fresh_store().await.expect("a temporary sled store");
        cqrs_core::conformance::reads_are_dense_prefixes(store).await;
    }
}

/// The suite again on a store that writes its log records uncompressed (format 3), as
/// stores written before compressed records hold them; the modules above use the default
/// (compressed records, format 4, where a run of events is large enough).
mod uncompressed {
    async fn fresh_store() -> Option<cqrs_sled::SledEventStore> {
        let config = cqrs_sled::SledConfig::temporary().compress_records(false);
        Some(config.open().expect("a temporary sled store"))
    }

    cqrs_core::store_conformance_tests!(fresh_store, damage_snapshot = super::damage_snapshot);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commit_order_is_position_order() {
        let store = fresh_store().await.expect("a temporary sled store");
        cqrs_core::conformance::reads_are_dense_prefixes(store).await;
    }
}
