//! `bank demo`: a random workload of deposits, withdrawals and transfers, then a summary
//! and an invariant check.

use std::time::Instant;

use cqrs_core::{CommandError, Inspect, Position};
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

/// The money every demo account starts with: 1,000.00.
const OPENING_DEPOSIT: i64 = 100_000;

/// What one task did.
#[derive(Debug, Default)]
struct Tally {
    commands: u64,
    rejected: u64,
    snapshots: u64,
    deposited: i64,
    withdrawn: i64,
    transfers: Vec<Uuid>,
    /// The log position of the last event it wrote.
    last: Position,
}

impl Tally {
    fn record(&mut self, done: &cqrs_core::Executed) {
        self.commands += 1;
        self.snapshots += u64::from(done.snapshot_taken);
        self.last = self.last.max(done.position.unwrap_or(Position::START));
    }

    fn add(mut self, other: Tally) -> Tally {
        self.commands += other.commands;
        self.rejected += other.rejected;
        self.snapshots += other.snapshots;
        self.deposited += other.deposited;
        self.withdrawn += other.withdrawn;
        self.transfers.extend(other.transfers);
        self.last = self.last.max(other.last);
        self
    }
}

/// A small deterministic generator (xorshift64*), seeded per task.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    fn cents(&mut self, max_units: u64) -> Result<Cents, BankError> {
        let cents = i64::try_from(1 + self.below(max_units * 100)).unwrap_or(1);
        Cents::new(cents).map_err(|e| BankError::InvalidInput(e.into()))
    }
}

/// One task's share of the workload: 45% deposits, 35% withdrawals, 20% transfers (one
/// in twenty to an account that does not exist, so the refund path runs too).
async fn work(
    bank: Bank,
    ids: Vec<String>,
    seed: u64,
    operations: u32,
) -> Result<Tally, BankError> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut tally = Tally::default();
    let len = ids.len() as u64;
    for _ in 0..operations {
        let source = usize::try_from(rng.below(len)).unwrap_or(0);
        let id = &ids[source];
        match rng.below(100) {
            0..=44 => {
                let amount = rng.cents(200)?;
                tally.record(
                    &bank
                        .accounts()
                        .execute(id, &AccountCommand::Deposit { amount })
                        .await?,
                );
                tally.deposited += amount.get();
            }
            45..=79 => {
                let amount = rng.cents(400)?;
                match bank
                    .accounts()
                    .execute(id, &AccountCommand::Withdraw { amount })
                    .await
                {
                    Ok(done) => {
                        tally.record(&done);
                        tally.withdrawn += amount.get();
                    }
                    Err(CommandError::Rejected(_)) => {
                        tally.commands += 1;
                        tally.rejected += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {
                let to = match rng.below(20) {
                    0 => "demo-missing".to_owned(),
                    // Any other account: an offset of 1..len from the source.
                    _ => ids[(source + 1 + usize::try_from(rng.below(len - 1)).unwrap_or(0))
                        % ids.len()]
                    .clone(),
                };
                let amount = rng.cents(300)?;
                tally
                    .transfers
                    .push(bank.request_transfer(id, &to, amount).await?);
                tally.commands += 1;
            }
        }
    }
    Ok(tally)
}

pub(crate) async fn run(bank: &Bank, args: &DemoArgs) -> Result<(), Failure> {
    if args.accounts < 2 || args.concurrency == 0 {
        return Err((
            2,
            "demo needs at least 2 accounts and a concurrency of at least 1".into(),
        ));
    }
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let ids: Vec<String> = (0..args.accounts)
        .map(|i| format!("demo-{run}-{i:04}"))
        .collect();
    let events_before = bank
        .store()
        .count_events(Position::START)
        .await
        .map_err(|e| fail(BankError::Store(e.into())))?;

    // Open the accounts, each with an opening deposit.
    let mut tally = Tally::default();
    let opening =
        Cents::new(OPENING_DEPOSIT).map_err(|e| fail(BankError::InvalidInput(e.into())))?;
    for id in &ids {
        let owner = format!("owner of {id}");
        let opened = bank
            .accounts()
            .execute(id, &AccountCommand::Open { owner })
            .await;
        tally.record(&opened.map_err(|e| fail(e.into()))?);
        let deposited = bank
            .accounts()
            .execute(id, &AccountCommand::Deposit { amount: opening })
            .await;
        tally.record(&deposited.map_err(|e| fail(e.into()))?);
        tally.deposited += OPENING_DEPOSIT;
    }

    // The process manager and the read model follow the log live while the load runs.
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|task| {
            let share = args.operations / args.concurrency
                + u32::from(task < args.operations % args.concurrency);
            tokio::spawn(work(bank.clone(), ids.clone(), u64::from(task), share))
        })
        .collect();
    for task in tasks {
        let done = task.await.map_err(|e| fail(BankError::Store(e.into())))?;
        tally = tally.add(done.map_err(fail)?);
    }
    let load_time = started.elapsed();

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

    // Rebuild the accounts read model (balances and history) from scratch, timed, with
    // the live projections stopped.
    bank.stop().await.map_err(fail)?;
    let rebuild_started = Instant::now();
    let replayed = bank.read_model().rebuild().await.map_err(fail)?;
    let rebuild_time = rebuild_started.elapsed();

    // Invariants: the read model equals a recomputation from the streams, and no money
    // was created or lost.
    let mut mismatches = Vec::new();
    let mut total = 0i64;
    for id in &ids {
        let loaded = bank
            .accounts()
            .load(id)
            .await
            .map_err(|e| fail(BankError::Store(e.into())))?;
        let from_view = bank.balance(id).await.map_err(fail)?.balance_cents;
        if loaded.state.balance != from_view {
            mismatches.push(format!(
                "{id}: stream {}, read model {from_view}",
                loaded.state.balance
            ));
        }
        total += loaded.state.balance;
    }
    let expected_total = tally.deposited - tally.withdrawn;
    let events_after = bank
        .store()
        .count_events(Position::START)
        .await
        .map_err(|e| fail(BankError::Store(e.into())))?;
    let ok = mismatches.is_empty() && total == expected_total;
    let summary = json!({
        "accounts": args.accounts,
        "concurrency": args.concurrency,
        "operations": args.operations,
        "commands": tally.commands,
        "rejected": tally.rejected,
        "commands_per_second": (f64::from(args.operations) / load_time.as_secs_f64().max(1e-9)).round(),
        "load_seconds": load_time.as_secs_f64(),
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
            "money_conserved": total == expected_total,
            "total_balance_cents": total,
            "expected_total_cents": expected_total,
            "all_transfers_finished": true,
        },
        "ok": ok,
    });
    print(&summary)?;
    if ok {
        Ok(())
    } else {
        Err((3, "the invariant check failed".into()))
    }
}
