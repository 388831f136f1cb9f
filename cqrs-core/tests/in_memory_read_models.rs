//! A read model in memory is never silently partial: its checkpoint lives beside it (in
//! the runner), so a new runner rebuilds it from the whole log whatever checkpoint
//! another runner saved; and it can be read while its runner runs.
//!
//! The regression: following the guide (docs/02 §9, docs/04 "Live"), a catch-up runner
//! saved its checkpoint in the store, and a live runner over a fresh in-memory model
//! resumed from it, showing a balance of 7 where it was 107.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use common::{Account, AccountCommand, AccountEvent};
use cqrs_core::{
    BoxError, CheckpointStore, Envelope, InMemoryCheckpoint, InMemoryEventStore, Position,
    Projection, ProjectionRunner, Repository, StoreCheckpoint,
};

/// The guide's read model: balances in memory, behind a handle that readers clone.
#[derive(Debug, Clone, Default)]
struct Balances(Arc<RwLock<HashMap<String, i64>>>);

impl Balances {
    fn balance(&self, account: &str) -> Option<i64> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(account)
            .copied()
    }
}

impl Projection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let mut balances = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for e in batch {
            let balance = balances.entry(e.stream.id().to_owned()).or_default();
            match e.event {
                AccountEvent::Opened { .. } => {}
                AccountEvent::Deposited { amount } => *balance += amount,
                AccountEvent::Withdrawn { amount } => *balance -= amount,
            }
        }
        Ok(())
    }

    async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }
}

/// How long a test waits for something to happen: a guard against a hang, never a
/// timing assertion.
const DEADLINE: Duration = Duration::from_secs(60);

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("not done within {DEADLINE:?}: {what}"))
}

/// Opens `acc-1` with 100 in it.
async fn open_with_100(store: &InMemoryEventStore) -> Repository<Account, InMemoryEventStore> {
    let accounts = Repository::<Account, _>::new(store.clone(), ());
    let open = AccountCommand::Open {
        owner: "ada".into(),
    };
    accounts.execute("acc-1", &open).await.unwrap();
    accounts
        .execute("acc-1", &AccountCommand::Deposit(100))
        .await
        .unwrap();
    accounts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_catch_up_then_live_pattern_shows_the_full_balance() {
    let store = InMemoryEventStore::new();
    let accounts = open_with_100(&store).await;

    // docs/02 §9: a catch-up runner over an in-memory model.
    let mut runner = ProjectionRunner::new(store.clone(), Balances::default());
    runner.catch_up().await.unwrap();
    assert_eq!(runner.projection().balance("acc-1"), Some(100));
    accounts
        .execute("acc-1", &AccountCommand::Deposit(7))
        .await
        .unwrap();

    // docs/04 "Live": a live runner over a fresh in-memory model, read while it runs.
    let balances = Balances::default();
    let mut live = ProjectionRunner::new(store.clone(), balances.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        live.run_until(async {
            let _ = stopped.await;
        })
        .await
    });
    eventually("the live model shows 107", || {
        balances.balance("acc-1") == Some(107)
    })
    .await;
    // It keeps following the log, and readers see it.
    accounts
        .execute("acc-1", &AccountCommand::Withdraw(7))
        .await
        .unwrap();
    eventually("the live model shows 100 again", || {
        balances.balance("acc-1") == Some(100)
    })
    .await;
    stop.send(()).unwrap();
    within("the live runner stops", task)
        .await
        .unwrap()
        .unwrap();
    // Nothing was written to the store on the in-memory model's behalf.
    assert_eq!(store.load_checkpoint("balances").await.unwrap(), None);
}

#[tokio::test]
async fn a_checkpoint_in_the_store_does_not_leave_a_new_in_memory_model_partial() {
    let store = InMemoryEventStore::new();
    let accounts = open_with_100(&store).await;
    // Someone (an older version of the service, an external sink of the same name) saved
    // a durable checkpoint "balances" at the end of the log.
    let mut durable = ProjectionRunner::with_strategy(
        store.clone(),
        Balances::default(),
        StoreCheckpoint::new(store.clone()),
    );
    durable.catch_up().await.unwrap();
    assert_eq!(
        store.load_checkpoint("balances").await.unwrap(),
        Some(Position::new(0, 2))
    );
    accounts
        .execute("acc-1", &AccountCommand::Deposit(7))
        .await
        .unwrap();
    // A fresh in-memory model replays the whole log: 107, not 7.
    let mut runner = ProjectionRunner::new(store.clone(), Balances::default());
    assert_eq!(runner.catch_up().await.unwrap(), 3);
    assert_eq!(runner.projection().balance("acc-1"), Some(107));
    assert_eq!(runner.checkpoint().await.unwrap(), Position::new(0, 3));
}

#[tokio::test]
async fn an_in_memory_model_given_to_a_second_runner_is_rebuilt_not_applied_twice() {
    let store = InMemoryEventStore::new();
    let accounts = open_with_100(&store).await;
    let balances = Balances::default();
    let mut first = ProjectionRunner::new(store.clone(), balances.clone());
    first.catch_up().await.unwrap();
    // The same runner resumes where it is.
    accounts
        .execute("acc-1", &AccountCommand::Deposit(7))
        .await
        .unwrap();
    assert_eq!(first.catch_up().await.unwrap(), 1);
    assert_eq!(balances.balance("acc-1"), Some(107));
    drop(first);
    // A second runner over the same model cannot know what the first applied: it
    // rebuilds the model (reset, then the whole log) instead of adding to it.
    let mut second = ProjectionRunner::new(store.clone(), balances.clone());
    assert_eq!(second.catch_up().await.unwrap(), 3);
    assert_eq!(balances.balance("acc-1"), Some(107));
}

#[tokio::test]
async fn runners_sharing_the_models_checkpoint_resume_where_the_model_is() {
    let store = InMemoryEventStore::new();
    let accounts = open_with_100(&store).await;
    // What an application that makes runners on demand keeps: the model and its
    // checkpoint, side by side.
    let (balances, checkpoint) = (Balances::default(), InMemoryCheckpoint::new());
    let runner =
        || ProjectionRunner::with_strategy(store.clone(), balances.clone(), checkpoint.clone());
    assert_eq!(runner().catch_up().await.unwrap(), 2);
    accounts
        .execute("acc-1", &AccountCommand::Deposit(7))
        .await
        .unwrap();
    assert_eq!(runner().catch_up().await.unwrap(), 1, "only what is new");
    assert_eq!(balances.balance("acc-1"), Some(107));
    assert_eq!(runner().checkpoint().await.unwrap(), Position::new(0, 3));
}
