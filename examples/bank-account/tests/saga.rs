//! The transfer process manager, including compensation and redelivery.

use cqrs_core::Repository;
use cqrs_core::{Inspect, Position};
use example_bank_account::domain::{AccountCommand, AccountServices, Cents, TransferStatus};
use example_bank_account::domain::{Transfer, TransferCommand};
use example_bank_account::{Bank, TransferOutcome};

fn cents(c: i64) -> Cents {
    Cents::new(c).unwrap()
}

/// Requests a transfer past the bank's checks, as a request stored by an older client
/// could be: the bank now refuses a transfer to a missing account up front, and this
/// exercises the process manager's refund when the credit fails anyway.
async fn transfer_unchecked(bank: &Bank, from: &str, to: &str, amount: i64) -> TransferOutcome {
    let id = uuid::Uuid::new_v4();
    let request = TransferCommand::Request(from.to_owned(), to.to_owned(), cents(amount));
    let transfers = Repository::<Transfer, _>::new(bank.store().clone(), ());
    transfers.execute(&id.to_string(), &request).await.unwrap();
    bank.finished(id).await.unwrap()
}

async fn bank_with(accounts: &[(&str, i64)]) -> Bank {
    let bank = Bank::open(
        "memory:",
        AccountServices::new(Cents::new(1_000_000).unwrap()),
    )
    .await
    .unwrap();
    bank.start();
    for (id, balance) in accounts {
        let owner = id.to_string();
        bank.execute(id, AccountCommand::open(*id, owner))
            .await
            .unwrap();
        if *balance > 0 {
            let amount = cents(*balance);
            bank.execute(id, AccountCommand::Deposit(amount))
                .await
                .unwrap();
        }
    }
    bank
}

async fn balance(bank: &Bank, id: &str) -> i64 {
    bank.balance(id).await.unwrap().balance_cents
}

async fn event_count(bank: &Bank) -> u64 {
    bank.store().count_events(Position::START).await.unwrap()
}

#[tokio::test]
async fn a_transfer_debits_and_credits() {
    let bank = bank_with(&[("a", 10_000), ("b", 0)]).await;
    let outcome = bank.transfer("a", "b", cents(3_000)).await.unwrap();
    assert_eq!(outcome.status, TransferStatus::Completed);
    assert_eq!(outcome.reason, None);
    assert_eq!(
        (balance(&bank, "a").await, balance(&bank, "b").await),
        (7_000, 3_000)
    );
    let kinds: Vec<String> = bank
        .history("b")
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.kind)
        .collect();
    assert_eq!(kinds, ["opened", "transfer_in"]);
}

#[tokio::test]
async fn a_transfer_request_to_a_missing_account_is_refunded() {
    let bank = bank_with(&[("a", 10_000)]).await;
    let outcome = transfer_unchecked(&bank, "a", "nobody", 2_500).await;
    assert_eq!(outcome.status, TransferStatus::Failed);
    let reason = outcome.reason.unwrap();
    assert!(
        reason.contains("nobody") && reason.contains("unknown account"),
        "{reason}"
    );
    assert_eq!(balance(&bank, "a").await, 10_000, "the debit was refunded");
    let history = bank.history("a").await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(kinds, ["opened", "deposit", "transfer_out", "refund"]);
    assert_eq!(history[2].amount_cents, -2_500);
    assert_eq!(history[3].balance_cents, 10_000);
    assert!(bank.balance("nobody").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn a_transfer_to_a_closed_account_is_refunded() {
    let bank = bank_with(&[("a", 500), ("closed", 0)]).await;
    bank.execute("closed", AccountCommand::Close).await.unwrap();
    let outcome = bank.transfer("a", "closed", cents(500)).await.unwrap();
    assert_eq!(outcome.status, TransferStatus::Failed);
    assert!(outcome.reason.unwrap().contains("account is closed"));
    assert_eq!(balance(&bank, "a").await, 500);
    assert_eq!(balance(&bank, "closed").await, 0);
}

#[tokio::test]
async fn a_transfer_without_funds_fails_without_moving_money() {
    let bank = bank_with(&[("a", 100), ("b", 0)]).await;
    let outcome = bank.transfer("a", "b", cents(101)).await.unwrap();
    assert_eq!(outcome.status, TransferStatus::Failed);
    assert!(outcome.reason.unwrap().contains("insufficient funds"));
    assert_eq!(
        (balance(&bank, "a").await, balance(&bank, "b").await),
        (100, 0)
    );
    let kinds: Vec<String> = bank
        .history("a")
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.kind)
        .collect();
    assert_eq!(kinds, ["opened", "deposit"], "nothing was debited");
}

#[tokio::test]
async fn a_transfer_to_the_same_account_is_rejected_before_anything_is_written() {
    let bank = bank_with(&[("a", 100)]).await;
    let before = event_count(&bank).await;
    let same = bank.transfer("a", "a", cents(1)).await.unwrap_err();
    assert!(same.is_rejected() && !same.is_not_found(), "{same:?}");
    let empty = bank.transfer("a", "", cents(1)).await.unwrap_err();
    assert!(empty.is_invalid_input(), "{empty:?}");
    assert_eq!(event_count(&bank).await, before);
}

#[tokio::test]
async fn redelivering_every_event_to_the_process_manager_changes_nothing() {
    let bank = bank_with(&[("a", 10_000), ("b", 1_000)]).await;
    bank.transfer("a", "b", cents(1_000)).await.unwrap();
    transfer_unchecked(&bank, "b", "ghost", 200).await;
    bank.transfer("b", "a", cents(50_000)).await.unwrap();
    let events = event_count(&bank).await;
    let balances = (balance(&bank, "a").await, balance(&bank, "b").await);
    // A rebuild replays the whole log into the process manager: every command it sends
    // again carries the id derived from its triggering event, so none applies twice.
    bank.stop().await.unwrap();
    let replayed = bank.transfer_runner().rebuild(|_| {}).await.unwrap();
    assert_eq!(replayed, events);
    assert_eq!(event_count(&bank).await, events, "no new events");
    assert_eq!(
        (balance(&bank, "a").await, balance(&bank, "b").await),
        balances
    );
    assert_eq!(balances, (9_000, 2_000));
}

#[tokio::test]
async fn redelivery_after_the_world_changed_still_changes_nothing() {
    // A debit refused for lack of funds, then funds arrive; a credit refused for a
    // missing account, then the account is opened. Replaying the process manager must
    // not now take the other branch of either decision.
    let bank = bank_with(&[("poor", 100), ("rich", 10_000)]).await;
    let refused = bank.transfer("poor", "rich", cents(5_000)).await.unwrap();
    assert_eq!(refused.status, TransferStatus::Failed);
    let refunded = transfer_unchecked(&bank, "rich", "later", 1_000).await;
    assert_eq!(refunded.status, TransferStatus::Failed);
    let amount = cents(10_000);
    bank.execute("poor", AccountCommand::Deposit(amount))
        .await
        .unwrap();
    let owner = "later".to_owned();
    bank.execute("later", AccountCommand::open("later", owner))
        .await
        .unwrap();
    let events = event_count(&bank).await;
    let before = (
        balance(&bank, "poor").await,
        balance(&bank, "rich").await,
        balance(&bank, "later").await,
    );

    bank.stop().await.unwrap();
    bank.transfer_runner().rebuild(|_| {}).await.unwrap();
    assert_eq!(
        event_count(&bank).await,
        events,
        "no command was sent again"
    );
    let after = (
        balance(&bank, "poor").await,
        balance(&bank, "rich").await,
        balance(&bank, "later").await,
    );
    assert_eq!(after, before);
    assert_eq!(after, (10_100, 10_000, 0));
    assert_eq!(
        bank.transfer_outcome(refused.transfer_id)
            .await
            .unwrap()
            .status,
        TransferStatus::Failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_from_or_to_an_unknown_account_writes_nothing() {
    let bank = bank_with(&[("a", 500)]).await;
    let before = bank.store().count_events(Position::START).await.unwrap();
    for (from, to) in [("nobody", "a"), ("a", "nobody")] {
        let err = bank.transfer(from, to, cents(100)).await.unwrap_err();
        assert!(err.is_not_found(), "{from} -> {to}: {err}");
    }
    let after = bank.store().count_events(Position::START).await.unwrap();
    assert_eq!(after, before, "a refused transfer wrote events");
    assert_eq!(bank.balance("a").await.unwrap().balance_cents, 500);
    bank.stop().await.unwrap();
}
