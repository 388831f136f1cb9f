//! Tenants: each tenant's store sees only its own streams, on every read path.
//!
//! Backends with a [`TenantStores`] implementation call these with tenant names that no
//! other run uses (and remove those tenants afterwards, where they outlive the test).

use futures::TryStreamExt;

use super::support::{append_ok, count_events, events, find_event, fresh_stream, read_all};
use crate::{
    CheckpointStore, EventLog, ExpectedVersion, Inspect, Position, SnapshotRecord, SnapshotStore,
    StreamInfo, TenantError, TenantId, TenantStores,
};

/// **Tenants are separate stores.** Two tenants write the same stream id and one writes
/// a stream of its own. Each tenant's `read_stream`, `read_all` (what projections read),
/// `count_events`, `find_event`, `list_streams`, `stats`, snapshots and checkpoints show
/// only its own data; a fresh handle on a tenant sees what it wrote; `tenants` lists
/// both.
pub async fn tenants_are_isolated<T: TenantStores>(tenants: T, a: TenantId, b: TenantId) {
    let store_a = match tenants.create(&a).await {
        Ok(store) => store,
        Err(e) => panic!("[tenants] creating tenant {a} must succeed, got {e:?}"),
    };
    let store_b = match tenants.create(&b).await {
        Ok(store) => store,
        Err(e) => panic!("[tenants] creating tenant {b} must succeed, got {e:?}"),
    };
    let shared = fresh_stream("tenant-shared");
    let only_a = fresh_stream("tenant-only-a");
    let a_shared = append_ok(&store_a, &shared, ExpectedVersion::NoStream, events("a", 3)).await;
    append_ok(
        &store_a,
        &only_a,
        ExpectedVersion::NoStream,
        events("a-own", 2),
    )
    .await;
    append_ok(&store_b, &shared, ExpectedVersion::NoStream, events("b", 1)).await;
    let snapshot = SnapshotRecord {
        version: 3,
        schema_version: 1,
        payload: b"{\"tenant\":\"a\"}".to_vec(),
    };
    if let Err(e) = store_a.save_snapshot(&shared, snapshot).await {
        panic!("[tenants] save_snapshot in tenant {a} must succeed, got {e:?}");
    }
    if let Err(e) = store_a
        .save_checkpoint("tenant-projection", a_shared.position)
        .await
    {
        panic!("[tenants] save_checkpoint in tenant {a} must succeed, got {e:?}");
    }

    // Tenant b: its one event, nothing of a's.
    let log_b = read_all(&store_b, Position::START, None).await;
    assert_eq!(
        log_b.len(),
        1,
        "[tenants] read_all of tenant {b} holds only its own event"
    );
    assert_eq!(log_b[0].stream, shared);
    let stream_b: Vec<_> = match store_b.read_stream(&shared, 1).try_collect().await {
        Ok(records) => records,
        Err(e) => panic!("[tenants] read_stream in tenant {b} must succeed, got {e:?}"),
    };
    assert_eq!(
        stream_b.iter().map(|r| r.event_id).collect::<Vec<_>>(),
        vec![log_b[0].event_id],
        "[tenants] the same stream id in tenant {b} holds only {b}'s event"
    );
    let none: Vec<_> = match store_b.read_stream(&only_a, 1).try_collect().await {
        Ok(records) => records,
        Err(e) => panic!("[tenants] read_stream in tenant {b} must succeed, got {e:?}"),
    };
    assert!(
        none.is_empty(),
        "[tenants] tenant {b} cannot read a stream of tenant {a}"
    );
    assert_eq!(
        count_events(&store_b, Position::START).await,
        1,
        "[tenants] count_events of tenant {b} counts only its own events"
    );
    let log_a = read_all(&store_a, Position::START, None).await;
    assert_eq!(log_a.len(), 5, "[tenants] tenant {a} holds its five events");
    for record in &log_a {
        assert!(
            find_event(&store_b, &record.stream, record.event_id)
                .await
                .is_none(),
            "[tenants] find_event in tenant {b} does not find tenant {a}'s event {}",
            record.event_id
        );
    }
    let listed: Vec<StreamInfo> = match store_b.list_streams().try_collect().await {
        Ok(streams) => streams,
        Err(e) => panic!("[tenants] list_streams in tenant {b} must succeed, got {e:?}"),
    };
    assert_eq!(
        listed,
        vec![StreamInfo {
            stream: shared.clone(),
            version: 1
        }],
        "[tenants] list_streams of tenant {b} lists only its own stream"
    );
    match store_b.stats().await {
        Ok(stats) => assert_eq!(
            (stats.streams, stats.events, stats.snapshots.unwrap_or(0)),
            (1, 1, 0),
            "[tenants] stats of tenant {b} count only its own streams, events and snapshots"
        ),
        Err(e) => panic!("[tenants] stats in tenant {b} must succeed, got {e:?}"),
    }
    match store_b.load_snapshot(&shared).await {
        Ok(None) => {}
        other => panic!("[tenants] tenant {b} has no snapshot of {shared}, got {other:?}"),
    }
    match store_b.load_checkpoint("tenant-projection").await {
        Ok(None) => {}
        other => panic!("[tenants] tenant {b} has no checkpoint of a's projection, got {other:?}"),
    }

    // A fresh handle on tenant a sees what it wrote.
    let again = match tenants.store(&a).await {
        Ok(store) => store,
        Err(e) => panic!("[tenants] store({a}) after create must succeed, got {e:?}"),
    };
    assert_eq!(
        read_all(&again, Position::START, None).await.len(),
        5,
        "[tenants] a fresh handle on tenant {a} reads its events"
    );
    match again.load_checkpoint("tenant-projection").await {
        Ok(Some(position)) => assert_eq!(position, a_shared.position),
        other => panic!("[tenants] tenant {a} keeps its checkpoint, got {other:?}"),
    }
    match tenants.tenants().await {
        Ok(names) => assert!(
            names.contains(&a) && names.contains(&b),
            "[tenants] tenants() lists {a} and {b}, got {names:?}"
        ),
        Err(e) => panic!("[tenants] tenants() must succeed, got {e:?}"),
    }
}

/// **Unknown tenants are refused.** `store` of a tenant that was never created is
/// [`TenantError::Unknown`] and creates nothing: the tenant is not listed afterwards.
pub async fn unknown_tenants_are_refused<T: TenantStores>(tenants: T, unknown: TenantId) {
    match tenants.store(&unknown).await {
        Err(TenantError::Unknown { tenant }) => assert_eq!(tenant, unknown),
        Err(e) => panic!("[tenants] store({unknown}) must be Unknown, got {e:?}"),
        Ok(_) => panic!("[tenants] store({unknown}) of a tenant never created must fail"),
    }
    match tenants.tenants().await {
        Ok(names) => assert!(
            !names.contains(&unknown),
            "[tenants] asking for an unknown tenant must not create it, got {names:?}"
        ),
        Err(e) => panic!("[tenants] tenants() must succeed, got {e:?}"),
    }
}
