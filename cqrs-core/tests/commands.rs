//! Command execution: retries on conflict, idempotent commands, snapshot equivalence.

mod common;

use std::sync::atomic::Ordering;

use common::interfering::InterferingStore;
use common::{Account, AccountCommand, AccountError, AccountEvent, Rng};
use cqrs_core::{
    CommandError, CommandOptions, Error, EventData, EventLog, ExpectedVersion, InMemoryEventStore,
    Inspect, Position, RecordedEvent, Repository, Result, RetryPolicy, SnapshotPolicy, StreamId,
};
use futures::TryStreamExt;
use uuid::Uuid;

fn open(owner: &str) -> AccountCommand {
    AccountCommand::Open {
        owner: owner.into(),
    }
}

/// Joins a spawned task, failing the test if it does not finish within a minute (a
/// guard against a hang, never a timing check).
async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), task)
        .await
        .expect("a spawned task did not finish within 60 s")
        .expect("a spawned task panicked")
}

/// One command of the random runs: mostly deposits and withdrawals, some opens.
fn random_command(rng: &mut Rng) -> AccountCommand {
    match rng.below(10) {
        0 => open("x"),
        1..=5 => AccountCommand::Deposit(rng.amount(50)),
        _ => AccountCommand::Withdraw(rng.amount(80)),
    }
}

#[tokio::test]
async fn conflict_is_retried_from_a_fresh_load() {
    let store = InterferingStore::new(3);
    let repo = Repository::<Account, _>::new(store.clone(), ());
    // The interfering deposits land before the open (Any), so the account is opened
    // after them; the command layer must reload and decide again each time.
    let done = repo.execute("a1", &open("ada")).await.unwrap();
    assert_eq!(done.attempts, 4, "three conflicts, then success");
    assert_eq!(done.version, 4);
    assert_eq!(done.events, 1);
    let loaded = repo.load("a1").await.unwrap();
    assert!(loaded.state.open);
    assert_eq!(
        loaded.state.balance, 3,
        "the concurrent writers' events are kept"
    );
}

#[tokio::test]
async fn conflicts_beyond_the_policy_are_a_conflict_error_and_write_nothing_of_ours() {
    let store = InterferingStore::new(10);
    let repo =
        Repository::<Account, _>::new(store.clone(), ()).with_retry(RetryPolicy::attempts(3));
    match repo.execute("a1", &open("ada")).await {
        Err(CommandError::Conflict {
            stream,
            attempts,
            source,
        }) => {
            assert_eq!(stream.to_string(), "account/a1");
            assert_eq!(attempts, 3);
            assert!(matches!(source, Error::Conflict { .. }));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let stream = StreamId::new("account", "a1").unwrap();
    let events: Vec<_> = store.read_stream(&stream, 1).try_collect().await.unwrap();
    assert_eq!(events.len(), 3, "only the interfering writer's events");
    assert!(events.iter().all(|e| e.event_type == "MoneyDeposited"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_all_apply_once() {
    // Without and with the state cache (whose clones share it).
    for cache in [0, 4] {
        concurrent_deposits(cache).await;
    }
}

async fn concurrent_deposits(cache: usize) {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Account, _>::new(store.clone(), ())
        .with_retry(RetryPolicy::attempts(1_000))
        .with_cache(cache);
    repo.execute("shared", &open("team")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                repo.execute("shared", &AccountCommand::Deposit(2))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        join(task).await;
    }
    let loaded = repo.load("shared").await.unwrap();
    assert_eq!(loaded.state.balance, 400);
    assert_eq!(loaded.version, 201);
}

#[tokio::test]
async fn rejection_store_failure_and_bad_input_are_distinct() {
    let repo = Repository::<Account, _>::new(InMemoryEventStore::new(), ());
    assert!(matches!(
        repo.execute("a1", &AccountCommand::Deposit(5)).await,
        Err(CommandError::Rejected(AccountError::NotOpen))
    ));
    assert!(matches!(
        repo.execute("", &open("x")).await,
        Err(CommandError::Invalid(Error::InvalidStreamId { .. }))
    ));
    // A record the aggregate cannot decode is a store-side failure, not a rejection.
    let stream = StreamId::new("account", "broken").unwrap();
    repo.store()
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new("AccountOpened", b"{oops".to_vec())],
        )
        .await
        .unwrap();
    match repo.execute("broken", &AccountCommand::Deposit(1)).await {
        Err(CommandError::Store(Error::Decode {
            stream, version, ..
        })) => {
            assert_eq!(stream.id(), "broken");
            assert_eq!(version, 1);
        }
        other => panic!("expected a decode failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_command_with_a_command_id_is_applied_once() {
    let repo = Repository::<Account, _>::new(InMemoryEventStore::new(), ());
    let open_id = CommandOptions::new().with_command_id(Uuid::new_v4());
    let first = repo
        .execute_with("a1", &open("ada"), &open_id)
        .await
        .unwrap();
    assert!(!first.already_applied);
    // Run again: the state now rejects "open", but the command was applied: success.
    let again = repo
        .execute_with("a1", &open("ada"), &open_id)
        .await
        .unwrap();
    assert!(again.already_applied);
    assert_eq!(again.version, first.version);

    let deposit_id = CommandOptions::new().with_command_id(Uuid::new_v4());
    let d1 = repo
        .execute_with("a1", &AccountCommand::Deposit(10), &deposit_id)
        .await
        .unwrap();
    repo.execute("a1", &AccountCommand::Deposit(1))
        .await
        .unwrap();
    // Redelivered after another command: the same event ids are found, nothing written.
    let d2 = repo
        .execute_with("a1", &AccountCommand::Deposit(10), &deposit_id)
        .await
        .unwrap();
    assert!(d2.already_applied);
    assert_eq!(d2.version, d1.version);
    let loaded = repo.load("a1").await.unwrap();
    assert_eq!(loaded.state.balance, 11);
    assert_eq!(loaded.version, 3);

    // Causation and correlation ids are recorded.
    let stream = StreamId::new("account", "a1").unwrap();
    let events: Vec<_> = repo
        .store()
        .read_stream(&stream, 2)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events[0].metadata.causation_id, deposit_id.command_id);
    assert_eq!(events[0].metadata.correlation_id, deposit_id.command_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_of_one_command_apply_once() {
    let repo = Repository::<Account, _>::new(InMemoryEventStore::new(), ())
        .with_retry(RetryPolicy::attempts(100));
    repo.execute("a1", &open("ada")).await.unwrap();
    let options = CommandOptions::new().with_command_id(Uuid::new_v4());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (repo, options) = (repo.clone(), options.clone());
        tasks.push(tokio::spawn(async move {
            repo.execute_with("a1", &AccountCommand::Deposit(7), &options)
                .await
        }));
    }
    for task in tasks {
        join(task).await.unwrap();
    }
    assert_eq!(repo.load("a1").await.unwrap().state.balance, 7);
}

#[tokio::test]
async fn snapshots_give_the_same_state_as_full_replay() {
    for seed in 1..=40u64 {
        let mut rng = Rng::new(seed);
        let plain = Repository::<Account, _>::new(InMemoryEventStore::new(), ());
        let every = 1 + rng.below(7);
        let snapped = Repository::<Account, _>::new(InMemoryEventStore::new(), ())
            .with_snapshots(SnapshotPolicy::EveryEvents(every))
            .with_background_snapshots(false);
        let accounts = ["a", "b", "c"];
        let mut snapshots_taken = 0;
        for _ in 0..80 {
            let id = accounts[rng.index(accounts.len())];
            let command = random_command(&mut rng);
            let a = plain.execute(id, &command).await;
            let b = snapped.execute(id, &command).await;
            match (&a, &b) {
                (Ok(x), Ok(y)) => {
                    assert_eq!(x.version, y.version, "seed {seed}");
                    snapshots_taken += u32::from(y.snapshot_taken);
                }
                (Err(CommandError::Rejected(x)), Err(CommandError::Rejected(y))) => {
                    assert_eq!(x, y, "seed {seed}")
                }
                _ => panic!("seed {seed}: outcomes differ: {a:?} vs {b:?}"),
            }
        }
        for id in accounts {
            let full = plain.load(id).await.unwrap();
            let fast = snapped.load(id).await.unwrap();
            assert_eq!(full.state, fast.state, "seed {seed}, account {id}");
            assert_eq!(full.version, fast.version);
            if let Some(v) = fast.snapshot_version {
                assert_eq!(fast.events_replayed, fast.version - v);
            }
        }
        assert!(
            snapshots_taken > 0 || every > 80,
            "seed {seed}: snapshots were taken"
        );
    }
}

#[tokio::test]
async fn snapshot_now_and_background_snapshots_are_used_by_loads() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Account, _>::new(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(10));
    repo.execute("a1", &open("ada")).await.unwrap();
    for _ in 0..24 {
        repo.execute("a1", &AccountCommand::Deposit(1))
            .await
            .unwrap();
    }
    assert_eq!(repo.snapshot_now("a1").await.unwrap(), Some(25));
    let loaded = repo.load("a1").await.unwrap();
    assert_eq!(loaded.snapshot_version, Some(25));
    assert_eq!(loaded.events_replayed, 0);
    assert_eq!(loaded.state.balance, 24);
    assert_eq!(repo.snapshot_now("nobody").await.unwrap(), None);
}

#[tokio::test]
async fn a_command_that_decides_nothing_appends_nothing() {
    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    struct Noop;
    impl cqrs_core::Aggregate for Noop {
        const TYPE: &'static str = "noop";
        type Command = ();
        type Event = AccountEvent;
        type Error = AccountError;
        type Services = ();
        fn handle(&self, _: &(), _: &()) -> Result<Vec<AccountEvent>, AccountError> {
            Ok(vec![])
        }
        fn apply(&mut self, _: AccountEvent) {}
    }
    let store = InMemoryEventStore::new();
    let done = Repository::<Noop, _>::new(store.clone(), ())
        .execute("n", &())
        .await
        .unwrap();
    assert_eq!((done.events, done.version, done.position), (0, 0, None));
    assert_eq!(store.count_events(Position::START).await.unwrap(), 0);
}

#[tokio::test]
async fn default_list_streams_and_stats_agree_with_the_in_memory_overrides() {
    // `InterferingStore` does not override `list_streams`/`stats`: it gets the trait's
    // default implementations, computed from the log.
    let store = InterferingStore::new(0);
    let repo = Repository::<Account, _>::new(store.clone(), ()).with_background_snapshots(false);
    for id in ["a", "b", "c"] {
        repo.execute(id, &open(id)).await.unwrap();
        repo.execute(id, &AccountCommand::Deposit(5)).await.unwrap();
    }
    repo.execute("b", &AccountCommand::Deposit(1))
        .await
        .unwrap();
    repo.snapshot_now("a").await.unwrap();

    let mut by_default: Vec<_> = store.list_streams().try_collect().await.unwrap();
    let mut overridden: Vec<_> = store.inner.list_streams().try_collect().await.unwrap();
    by_default.sort_by(|x, y| x.stream.cmp(&y.stream));
    overridden.sort_by(|x, y| x.stream.cmp(&y.stream));
    assert_eq!(by_default, overridden);
    assert_eq!(
        by_default.iter().map(|s| s.version).collect::<Vec<_>>(),
        [2, 3, 2]
    );
    // The default counts streams and events; it knows nothing of snapshots.
    let stats = store.stats().await.unwrap();
    let overridden = store.inner.stats().await.unwrap();
    assert_eq!((stats.streams, stats.events, stats.snapshots), (3, 7, None));
    assert_eq!(
        (overridden.streams, overridden.events, overridden.snapshots),
        (3, 7, Some(1))
    );
}

#[tokio::test]
async fn find_applied_tells_whether_a_command_id_left_events() {
    let repo = Repository::<Account, _>::new(InMemoryEventStore::new(), ());
    let opened = CommandOptions::new().with_command_id(Uuid::new_v4());
    assert_eq!(repo.find_applied("a1", &opened).await.unwrap(), None);
    let done = repo
        .execute_with("a1", &open("ada"), &opened)
        .await
        .unwrap();
    let found = repo.find_applied("a1", &opened).await.unwrap().unwrap();
    assert!(found.already_applied);
    assert_eq!(
        (found.version, found.position),
        (done.version, done.position)
    );
    // Another stream, a rejected command, and no command id: nothing found.
    assert_eq!(repo.find_applied("a2", &opened).await.unwrap(), None);
    let rejected = CommandOptions::new().with_command_id(Uuid::new_v4());
    assert!(
        repo.execute_with("a1", &AccountCommand::Withdraw(5), &rejected)
            .await
            .is_err()
    );
    assert_eq!(repo.find_applied("a1", &rejected).await.unwrap(), None);
    assert_eq!(
        repo.find_applied("a1", &CommandOptions::new())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn cached_states_give_the_same_outcomes_as_loads() {
    for seed in 1..=40u64 {
        let mut rng = Rng::new(seed);
        let plain = Repository::<Account, _>::new(InMemoryEventStore::new(), ());
        // A small cache, so states are evicted and loaded again along the way.
        let capacity = 2 + rng.index(4);
        let mut cached = Repository::<Account, _>::new(InMemoryEventStore::new(), ())
            .with_cache(capacity)
            .with_background_snapshots(false);
        if seed % 2 == 0 {
            cached = cached.with_snapshots(SnapshotPolicy::EveryEvents(1 + rng.below(7)));
        }
        let accounts = ["a", "b", "c", "d", "e", "f"];
        for _ in 0..120 {
            let id = accounts[rng.index(accounts.len())];
            let command = random_command(&mut rng);
            let a = plain.execute(id, &command).await;
            let b = cached.execute(id, &command).await;
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert_eq!((x.version, x.events), (y.version, y.events)),
                (Err(CommandError::Rejected(x)), Err(CommandError::Rejected(y))) => {
                    assert_eq!(x, y, "seed {seed}")
                }
                _ => panic!("seed {seed}: outcomes differ: {a:?} vs {b:?}"),
            }
        }
        for id in accounts {
            let full = plain.load(id).await.unwrap();
            let other = cached.load(id).await.unwrap();
            assert_eq!(
                (full.state, full.version),
                (other.state, other.version),
                "seed {seed}, account {id}"
            );
        }
        let log = |store: &InMemoryEventStore| {
            let store = store.clone();
            async move {
                let records: Vec<RecordedEvent> = store
                    .read_all(Position::START, None)
                    .try_collect()
                    .await
                    .unwrap();
                records
                    .into_iter()
                    .map(|r| (r.stream, r.version, r.event_type, r.payload))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            log(plain.store()).await,
            log(cached.store()).await,
            "seed {seed}: the same events are written"
        );
    }
}

#[tokio::test]
async fn a_cache_hit_skips_the_load_and_a_stale_entry_is_reloaded_for_free() {
    let store = InterferingStore::new(0);
    let repo = Repository::<Account, _>::new(store.clone(), ())
        .with_cache(16)
        .with_retry(RetryPolicy::none());
    repo.execute("a1", &open("ada")).await.unwrap();
    for _ in 0..5 {
        let done = repo
            .execute("a1", &AccountCommand::Deposit(10))
            .await
            .unwrap();
        assert_eq!(done.attempts, 1);
    }
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        1,
        "only the first command loads the stream"
    );
    // A refusal is never decided on a cached state (nothing appended could tell that it
    // is stale): it costs a load, whose state is then cached.
    assert!(matches!(
        repo.execute("a1", &AccountCommand::Withdraw(1_000)).await,
        Err(CommandError::Rejected(
            AccountError::InsufficientFunds { .. }
        ))
    ));
    assert_eq!(store.reads.load(Ordering::SeqCst), 2);

    // Another writer appends behind the cache's back: the cached state is stale. The
    // append conflicts, the stream is loaded, and the command succeeds on its first
    // counted attempt although the policy allows no retry.
    store.conflicts_left.store(1, Ordering::SeqCst);
    let done = repo
        .execute("a1", &AccountCommand::Deposit(10))
        .await
        .unwrap();
    assert_eq!((done.attempts, done.version), (1, 8));
    assert_eq!(store.reads.load(Ordering::SeqCst), 3);
    assert_eq!(repo.load("a1").await.unwrap().state.balance, 61);

    // A second repository with its own cache, writing to the same streams in turn:
    // each sees the other's events.
    let other = Repository::<Account, _>::new(store.clone(), ())
        .with_cache(16)
        .with_retry(RetryPolicy::none());
    for i in 0..10 {
        let writer = if i % 2 == 0 { &repo } else { &other };
        writer
            .execute("a1", &AccountCommand::Deposit(1))
            .await
            .unwrap();
    }
    let loaded = repo.load("a1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (71, 18));

    // What this guards against (found by the bank's two-server test): another writer
    // makes possible a command that the cached state would refuse. The refusal must not
    // be reported.
    let cached = Repository::<Account, _>::new(store.clone(), ())
        .with_cache(16)
        .with_retry(RetryPolicy::none());
    cached.execute("b1", &open("bob")).await.unwrap();
    other
        .execute("b1", &AccountCommand::Deposit(5))
        .await
        .unwrap();
    let done = cached
        .execute("b1", &AccountCommand::Withdraw(5))
        .await
        .expect("the deposit made elsewhere makes the withdrawal possible");
    assert_eq!((done.attempts, done.version), (1, 3));
}
