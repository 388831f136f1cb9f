//! `bank demo`: a random workload of deposits, withdrawals and transfers, then a summary
//! and an invariant check.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use cqrs_core::{Inspect, Position};
use example_bank_account::domain::{AccountCommand, Cents, TransferStatus};
use example_bank_account::{Bank, BankError};
use serde_json::json;
use uuid::Uuid;

use crate::{Failure, fail, print};

/// Arguments of `bank demo`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoArgs {
    /// How many accounts to open.
    #[arg(long, default_value_t = 100)]
    accounts: u32,
    /// How many random operations to run.
    #[arg(long, default_value_t = 20_000)]
    operations: u32,
    /// How many tasks run operations at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
}

/// What the demo did, shared by its tasks.
#[derive(Debug, Default)]
struct Tally {
    commands: u64,
    rejected: u64,
    snapshots: u64,
    /// Money in minus money out, in cents.
    net: i64,
    transfers: Vec<Uuid>,
    /// The log position of the last event written.
    last: Position,
}

type Shared = Arc<Mutex<Tally>>;

/// Runs an account command and counts it; a refused withdrawal is counted, not an error.
async fn account(
    bank: &Bank,
    tally: &Shared,
    id: &str,
    command: AccountCommand,
) -> Result<(), BankError> {
    let net = match &command {
        AccountCommand::Deposit { amount } => amount.get(),
        AccountCommand::Withdraw { amount } => -amount.get(),
        _ => 0,
    };
    let done = bank.accounts().execute(id, &command).await;
    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    tally.commands += 1;
    match done {
        Ok(done) => {
            tally.snapshots += u64::from(done.snapshot_taken);
            tally.net += net;
            tally.last = tally.last.max(done.position.unwrap_or_default());
        }
        Err(e) if e.is_rejected() => tally.rejected += 1,
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// An amount of the workload (up to 100,000 cents).
fn cents(cents: usize) -> Cents {
    let cents = Cents::new(i64::try_from(cents).unwrap_or(1));
    cents.unwrap_or_else(|_| unreachable!("up to 100,000 cents"))
}

/// One task's share of the workload: 45% deposits, 35% withdrawals, 20% transfers (one
/// in twenty to an account that does not exist, so the refund path runs too).
async fn work(
    bank: Bank,
    tally: Shared,
    ids: Arc<Vec<String>>,
    seed: u64,
    operations: u32,
) -> Result<(), BankError> {
    // A small deterministic generator (xorshift64*), seeded per task.
    let mut state = 0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut below = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        usize::try_from(state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64).unwrap_or(0)
    };
    for _ in 0..operations {
        let (source, dice) = (below(ids.len()), below(100));
        let cents = |units: usize, below: &mut dyn FnMut(usize) -> usize| {
            Cents::new(i64::try_from(1 + below(units * 100)).unwrap_or(1))
        };
        let id = &ids[source];
        match dice {
            0..=44 => {
                let amount =
                    cents(200, &mut below).map_err(|e| BankError::InvalidInput(e.into()))?;
                account(&bank, &tally, id, AccountCommand::Deposit { amount }).await?;
            }
            45..=79 => {
                let amount =
                    cents(400, &mut below).map_err(|e| BankError::InvalidInput(e.into()))?;
                account(&bank, &tally, id, AccountCommand::Withdraw { amount }).await?;
            }
            _ => {
                let to = match below(20) {
                    0 => "demo-missing".to_owned(),
                    // Any other account: an offset of 1..len from the source.
                    _ => ids[(source + 1 + below(ids.len() - 1)) % ids.len()].clone(),
                };
                let amount =
                    cents(300, &mut below).map_err(|e| BankError::InvalidInput(e.into()))?;
                let transfer_id = bank.request_transfer(id, &to, amount).await?;
                let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
                tally.commands += 1;
                tally.transfers.push(transfer_id);
            }
        }
    }
    Ok(())
}

pub(crate) async fn run(bank: &Bank, args: &DemoArgs) -> Result<(), Failure> {
    if args.accounts < 2 || args.concurrency == 0 {
        return Err((
            2,
            "demo needs at least 2 accounts and a concurrency of at least 1".into(),
        ));
    }
    let store_failed = |e: cqrs_core::Error| fail(BankError::Store(e.into()));
    let events_before = bank
        .store()
        .count_events(Position::START)
        .await
        .map_err(store_failed)?;
    // Open the accounts (ids unique to the run), each with 1,000.00.
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let ids: Vec<String> = (0..args.accounts)
        .map(|i| format!("demo-{run}-{i:04}"))
        .collect();
    let tally = Shared::default();
    let opening = cents(100_000);
    for id in &ids {
        let owner = format!("owner of {id}");
        account(bank, &tally, id, AccountCommand::Open { owner })
            .await
            .map_err(fail)?;
        let deposit = AccountCommand::Deposit { amount: opening };
        account(bank, &tally, id, deposit).await.map_err(fail)?;
    }

    // The process manager and the read model follow the log live while the load runs.
    let started = Instant::now();
    let (ids, mut tasks) = (Arc::new(ids), Vec::new());
    for task in 0..args.concurrency {
        let share = args.operations / args.concurrency
            + u32::from(task < args.operations % args.concurrency);
        let work = work(
            bank.clone(),
            tally.clone(),
            ids.clone(),
            u64::from(task),
            share,
        );
        tasks.push(tokio::spawn(work));
    }
    for task in tasks {
        task.await
            .map_err(|e| fail(BankError::Store(e.into())))?
            .map_err(fail)?;
    }
    let load_time = started.elapsed();
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));

    // Wait until every transfer has ended and the read model shows everything.
    let (mut completed, mut refused, mut refunded) = (0u64, 0u64, 0u64);
    for transfer_id in &tally.transfers {
        let outcome = bank.finished(*transfer_id).await.map_err(fail)?;
        match (outcome.status, outcome.reason) {
            (TransferStatus::Completed, _) => completed += 1,
            // Refused at the debit (nothing moved), or refunded after the credit failed.
            (_, Some(reason)) if reason.starts_with("source") => refused += 1,
            _ => refunded += 1,
        }
    }
    bank.read_model().wait_for(tally.last).await.map_err(fail)?;
    let settle_time = started.elapsed();

    // Rebuild the read model from the whole log, timed, with the live projections stopped.
    bank.stop().await.map_err(fail)?;
    let rebuild_started = Instant::now();
    let replayed = bank.read_model().rebuild().await.map_err(fail)?;
    let rebuild_time = rebuild_started.elapsed();

    // Invariants: the read model equals the streams, and no money was created or lost.
    let (mut mismatches, mut total) = (Vec::new(), 0);
    for id in ids.iter() {
        let in_stream = bank
            .accounts()
            .load(id)
            .await
            .map_err(store_failed)?
            .state
            .balance;
        let in_view = bank.balance(id).await.map_err(fail)?.balance_cents;
        if in_stream != in_view {
            mismatches.push(format!("{id}: stream {in_stream}, read model {in_view}"));
        }
        total += in_stream;
    }
    let events_after = bank
        .store()
        .count_events(Position::START)
        .await
        .map_err(store_failed)?;
    let ok = mismatches.is_empty() && total == tally.net;
    let seconds = load_time.as_secs_f64().max(1e-9);
    print(&json!({
        "accounts": args.accounts,
        "operations": args.operations,
        "concurrency": args.concurrency,
        "commands": tally.commands,
        "rejected": tally.rejected,
        "commands_per_second": (f64::from(args.operations) / seconds).round(),
        "load_seconds": seconds,
        "settle_seconds": settle_time.as_secs_f64(),
        "events_written": events_after - events_before,
        "snapshots_taken": tally.snapshots,
        "transfers": {
            "requested": tally.transfers.len(),
            "completed": completed,
            "refused_at_debit": refused,
            "refunded": refunded,
            "pending": 0,
        },
        "rebuild": { "events": replayed, "seconds": rebuild_time.as_secs_f64() },
        "invariants": {
            "read_model_matches_streams": mismatches.is_empty(),
            "mismatches": &mismatches[..mismatches.len().min(10)],
            "money_conserved": total == tally.net,
            "total_balance_cents": total,
            "expected_total_cents": tally.net,
            "all_transfers_finished": true,
        },
        "ok": ok,
    }))?;
    if ok {
        Ok(())
    } else {
        Err((3, "the invariant check failed".into()))
    }
}
