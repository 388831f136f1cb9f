//! Quickstart: an event-sourced bank account on the in-memory store, in one file.
//!
//! Run it with `cargo run -p cqrs-core --example quickstart`, and its tests with
//! `cargo test -p cqrs-core --example quickstart`. It prints what each step did. It uses
//! `#[derive(DomainEvent)]`, from cqrs-core's `derive` feature.

use std::collections::BTreeMap;

use cqrs_core::{
    Aggregate, AggregateExt, BoxError, CommandError, CommandOptions, DomainEvent, Envelope,
    EventData, EventLog, ExpectedVersion, InMemoryEventStore, Progress, Projection,
    ProjectionRunner, Repository, RunnerConfig, SnapshotPolicy,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One account's state, rebuilt from its events. Amounts are in cents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: u64,
}

/// What a caller asks an account to do.
#[derive(Debug)]
enum Command {
    Open(String),
    Deposit(u64),
    Withdraw(u64),
}

/// What an account records.
///
/// Each variant has a stable name, stored with each of its events (cqrs-core's `derive`
/// feature writes `EVENT_TYPES` and `event_type` from these attributes). The names stay
/// when the Rust type or its variants are renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum Event {
    #[event(name = "AccountOpened")]
    Opened(String), // the owner's name
    #[event(name = "MoneyDeposited")]
    Deposited(u64),
    #[event(name = "MoneyWithdrawn")]
    Withdrawn(u64),
}

/// Why an account refuses a command.
#[derive(Debug, PartialEq, thiserror::Error)]
enum Rejection {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: the balance is {0}, {1} was asked for")]
    InsufficientFunds(u64, u64),
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = Command;
    type Event = Event;
    type Error = Rejection;
    type Services = ();

    // A pure decision, without I/O: the repository loads the state and appends the events.
    fn handle(&self, command: &Command, _: &()) -> Result<Vec<Event>, Rejection> {
        match command {
            Command::Open(_) if self.open => Err(Rejection::AlreadyOpen),
            Command::Open(owner) => Ok(vec![Event::Opened(owner.clone())]),
            _ if !self.open => Err(Rejection::NotOpen),
            Command::Deposit(amount) => Ok(vec![Event::Deposited(*amount)]),
            Command::Withdraw(amount) if *amount > self.balance => {
                Err(Rejection::InsufficientFunds(self.balance, *amount))
            }
            Command::Withdraw(amount) => Ok(vec![Event::Withdrawn(*amount)]),
        }
    }

    // Never fails: an event is a fact that already happened.
    fn apply(&mut self, event: Event) {
        match event {
            Event::Opened(_) => self.open = true,
            Event::Deposited(amount) => self.balance += amount,
            Event::Withdrawn(amount) => self.balance -= amount,
        }
    }
}

/// A read model: every account's balance, built from the global log.
#[derive(Debug, Default)]
struct Balances(BTreeMap<String, u64>);

impl Projection for Balances {
    type Event = Event;

    fn name(&self) -> &str {
        "balances"
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<Event>]) -> Result<(), BoxError> {
        for envelope in batch {
            let balance = self.0.entry(envelope.stream.id().to_owned()).or_default();
            match envelope.event {
                Event::Opened(_) => {}
                Event::Deposited(amount) => *balance += amount,
                Event::Withdrawn(amount) => *balance -= amount,
            }
        }
        Ok(())
    }

    async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
        self.0.clear();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    // A snapshot every 10 events. Snapshots are saved by a background task by default;
    // here they are saved before `execute` returns, so each run prints the same.
    let bank = Account::repository(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(10))
        .with_background_snapshots(false);

    println!("1. Commands");
    bank.execute("alice", &Command::Open("Alice".into()))
        .await?;
    let done = bank.execute("alice", &Command::Deposit(100)).await?;
    println!("   alice opened, 100 deposited: version {}", done.version);
    match bank.execute("alice", &Command::Withdraw(500)).await {
        Err(CommandError::Rejected(rejection)) => println!("   withdraw 500: {rejection}"),
        other => return Err(format!("expected a rejection, got {other:?}").into()),
    }

    println!("2. An idempotent command");
    let deposit = Command::Deposit(25);
    let once = CommandOptions::new().with_command_id(Uuid::new_v4());
    let first = bank.execute_with("alice", &deposit, &once).await?;
    let again = bank.execute_with("alice", &deposit, &once).await?;
    let (wrote, dup) = (first.events, again.already_applied);
    println!("   deposit 25 twice with one command id: {wrote} event written");
    println!("   the second time: already_applied = {dup}, nothing written");

    println!("3. Conflicts");
    // Two writers read alice at the same version. The first append wins; the second,
    // which still expects the old version, is refused with a typed conflict.
    let seen = bank.load("alice").await?.version;
    bank.execute("alice", &Command::Deposit(1)).await?;
    let late = EventData::new("MoneyDeposited", serde_json::to_vec(&Event::Deposited(1))?);
    let stream = Account::stream_id("alice")?;
    let stale = store.append(&stream, ExpectedVersion::Exact(seen), vec![late]);
    let conflict = stale.await.expect_err("a stale append conflicts");
    println!("   a stale append: {conflict}");
    // `execute` handles conflicts itself: it reloads, decides again and retries.
    bank.execute("shared", &Command::Open("Bob".into())).await?;
    let racers = [(); 2].map(|()| tokio::spawn(deposit_50(bank.clone())));
    let mut retries = 0;
    for racer in racers {
        retries += racer.await??;
    }
    let shared = bank.load("shared").await?;
    let balance = shared.state.balance;
    println!("   2 tasks x 50 deposits of 1 into shared: balance {balance}, none lost");
    println!("   attempts that lost a race and were retried: {retries} (varies by run)");

    println!("4. Snapshots");
    let (version, replayed) = (shared.version, shared.events_replayed);
    let from = shared.snapshot_version.unwrap_or(0);
    println!("   shared at version {version}: snapshot at {from} + {replayed} event(s)");

    println!("5. A projection");
    // Small batches, to see several progress reports.
    let config = RunnerConfig {
        batch_size: 40,
        ..RunnerConfig::default()
    };
    let mut runner = ProjectionRunner::new(store, Balances::default()).with_config(config);
    let read = runner.catch_up().await?;
    let balances = &runner.projection().0;
    println!("   caught up: {read} events read, {balances:?}");
    let read = runner.catch_up().await?;
    println!("   again: {read} events read (it resumes from its checkpoint)");
    let before = runner.projection().0.clone();
    runner.rebuild(report).await?;
    let same = runner.projection().0 == before;
    println!("   rebuilt: {:?}, the same: {same}", runner.projection().0);
    Ok(())
}

/// Deposits 1 into the shared account 50 times; returns how many attempts lost a race.
async fn deposit_50(bank: Repository<Account, InMemoryEventStore>) -> Result<u32, BoxError> {
    let mut retries = 0;
    for _ in 0..50 {
        retries += bank.execute("shared", &Command::Deposit(1)).await?.attempts - 1;
    }
    Ok(retries)
}

/// Prints the progress of a rebuild.
fn report(p: Progress) {
    let (done, total, rate) = (p.done, p.total, p.rate());
    println!("   rebuild: {done}/{total} events, {rate:.0} events/s");
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_core::testkit::AggregateTest;

    #[test]
    fn a_deposit_adds_to_the_balance() {
        AggregateTest::<Account>::new(())
            .given([Event::Opened("Ada".into()), Event::Deposited(5)])
            .when(Command::Deposit(10))
            .then_expect_events([Event::Deposited(10)])
            .then_expect_state(|account| assert_eq!(account.balance, 15));
    }

    #[test]
    fn impossible_commands_are_rejected() {
        let rejection = AggregateTest::<Account>::new(())
            .given([Event::Opened("Ada".into()), Event::Deposited(5)])
            .when(Command::Withdraw(6))
            .then_expect_error();
        assert_eq!(rejection, Rejection::InsufficientFunds(5, 6));
        AggregateTest::<Account>::new(())
            .given_no_previous_events()
            .when(Command::Deposit(1))
            .then_expect_error_message("the account is not open");
    }
}
