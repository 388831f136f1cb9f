//! `bank demo`: a random workload of deposits, withdrawals and transfers, then a summary
//! and an invariant check.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use cqrs_core::{CommandError, Inspect, Position};
use example_bank_account::Bank;
use example_bank_account::domain::{AccountCommand, Cents, TransferStatus, format_cents};
use serde_json::json;
use uuid::Uuid;

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

#[derive(Default)]
struct Tally {
    commands: AtomicU64,
    rejected: AtomicU64,
    events: AtomicU64,
    snapshots: AtomicU64,
    deposited: AtomicI64,
    withdrawn: AtomicI64,
}

impl Tally {
    fn record(&self, done: &cqrs_core::Executed) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(done.events as u64, Ordering::Relaxed);
        self.snapshots
            .fetch_add(u64::from(done.snapshot_taken), Ordering::Relaxed);
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
}

fn cents(rng: &mut Rng, max_units: u64) -> Cents {
    let c = i64::try_from(1 + rng.below(max_units * 100)).unwrap_or(1);
    Cents::new(c)
        .unwrap_or_else(|_| Cents::new(1).unwrap_or_else(|_| unreachable!("1 cent is valid")))
}

fn fail(message: impl std::fmt::Display) -> (u8, String) {
    (3, message.to_string())
}

pub(crate) async fn run(bank: &Bank, args: &DemoArgs, json: bool) -> Result<(), (u8, String)> {
    if args.accounts < 2 || args.concurrency == 0 {
        return Err((
            2,
            "demo needs at least 2 accounts and a concurrency of at least 1".into(),
        ));
    }
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let ids: Arc<Vec<String>> = Arc::new(
        (0..args.accounts)
            .map(|i| format!("demo-{run}-{i:04}"))
            .collect(),
    );
    let tally = Arc::new(Tally::default());
    let events_before = bank
        .store()
        .count_events(Position::START)
        .await
        .map_err(fail)?;
    let snapshots_before = bank
        .store()
        .stats()
        .await
        .map_err(fail)?
        .snapshots
        .unwrap_or(0);
    let interactive = std::io::stderr().is_terminal() && !json;
    if !json {
        eprintln!(
            "bank demo on {}: {} accounts, {} operations, {} concurrent tasks",
            bank.description(),
            args.accounts,
            args.operations,
            args.concurrency
        );
    }

    // Open the accounts, each with an opening deposit.
    for id in ids.iter() {
        let done = bank
            .accounts()
            .execute(
                id,
                &AccountCommand::Open {
                    owner: format!("owner of {id}"),
                },
            )
            .await
            .map_err(fail)?;
        tally.record(&done);
        let amount = Cents::new(OPENING_DEPOSIT).map_err(fail)?;
        let done = bank
            .accounts()
            .execute(id, &AccountCommand::Deposit { amount })
            .await
            .map_err(fail)?;
        tally.record(&done);
        tally
            .deposited
            .fetch_add(OPENING_DEPOSIT, Ordering::Relaxed);
    }

    // The process manager and the read model follow the log live while the load runs.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let background = {
        let bank = bank.clone();
        tokio::spawn(async move {
            bank.run_projections(async {
                let _ = stopped.await;
            })
            .await
        })
    };

    let bar = if interactive {
        let bar = indicatif::ProgressBar::new(u64::from(args.operations));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} operations  {per_sec}  eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let transfers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let share = args.operations / args.concurrency
            + u32::from(task < args.operations % args.concurrency);
        let (bank, ids, tally, bar, transfers) = (
            bank.clone(),
            ids.clone(),
            tally.clone(),
            bar.clone(),
            transfers.clone(),
        );
        let ghost = format!("demo-{run}-missing");
        tasks.push(tokio::spawn(async move {
            let mut rng =
                Rng(0x9E37_79B9_7F4A_7C15
                    ^ (u64::from(task) + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
            for _ in 0..share {
                let len = ids.len() as u64;
                let id = &ids[usize::try_from(rng.below(len)).unwrap_or(0)];
                match rng.below(100) {
                    0..=44 => {
                        let amount = cents(&mut rng, 200);
                        let done = bank
                            .accounts()
                            .execute(id, &AccountCommand::Deposit { amount })
                            .await?;
                        tally.record(&done);
                        tally.deposited.fetch_add(amount.get(), Ordering::Relaxed);
                    }
                    45..=79 => {
                        let amount = cents(&mut rng, 400);
                        match bank
                            .accounts()
                            .execute(id, &AccountCommand::Withdraw { amount })
                            .await
                        {
                            Ok(done) => {
                                tally.record(&done);
                                tally.withdrawn.fetch_add(amount.get(), Ordering::Relaxed);
                            }
                            Err(CommandError::Rejected(_)) => {
                                tally.commands.fetch_add(1, Ordering::Relaxed);
                                tally.rejected.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    _ => {
                        // One transfer in twenty goes to an account that does not exist:
                        // the process manager must refund the source.
                        let to = if rng.below(20) == 0 {
                            ghost.clone()
                        } else {
                            // Any other account: an offset of 1..len from the source.
                            let source = ids.iter().position(|i| i == id).unwrap_or(0);
                            let offset = 1 + usize::try_from(rng.below(len - 1)).unwrap_or(0);
                            ids[(source + offset) % ids.len()].clone()
                        };
                        let amount = cents(&mut rng, 300);
                        let transfer_id = bank
                            .request_transfer(id, &to, amount)
                            .await
                            .map_err(|e| CommandError::Store(cqrs_core::Error::store(e)))?;
                        tally.commands.fetch_add(1, Ordering::Relaxed);
                        transfers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(transfer_id);
                    }
                }
                bar.inc(1);
            }
            Ok::<(), CommandError<example_bank_account::domain::AccountError>>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(fail)?
            .map_err(|e| fail(example_bank_account::full_chain(&e)))?;
    }
    let load_time = started.elapsed();
    bar.finish_and_clear();
    let _ = stop.send(());
    background.await.map_err(fail)?.map_err(fail)?;
    // Finish every transfer and bring the read model up to date.
    bank.sync().await.map_err(fail)?;
    let settle_time = started.elapsed();

    // Rebuild the accounts read model (balances and history) from scratch, timed.
    let rebuild_started = Instant::now();
    let replayed = bank
        .accounts_runner()
        .rebuild(|_| {})
        .await
        .map_err(|e| fail(example_bank_account::full_chain(&e)))?;
    let rebuild_time = rebuild_started.elapsed();

    // Invariants: the read model equals a recomputation from the streams, every transfer
    // ended, and no money was created or lost.
    let mut mismatches = Vec::new();
    let mut total = 0i64;
    for id in ids.iter() {
        let from_stream = bank.accounts().load(id).await.map_err(fail)?.state.balance;
        let from_view = bank.balance(id).await.map_err(fail)?.balance_cents;
        if from_stream != from_view {
            mismatches.push(format!(
                "{id}: stream {from_stream}, read model {from_view}"
            ));
        }
        total += from_stream;
    }
    let transfers = transfers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (mut completed, mut refused, mut refunded, mut pending) = (0u64, 0u64, 0u64, 0u64);
    for transfer_id in &transfers {
        let outcome = bank.transfer_outcome(*transfer_id).await.map_err(fail)?;
        match outcome.status {
            TransferStatus::Completed => completed += 1,
            // Refused at the debit (nothing moved), or refunded after the credit failed.
            TransferStatus::Failed
                if outcome
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("source")) =>
            {
                refused += 1;
            }
            TransferStatus::Failed => refunded += 1,
            _ => pending += 1,
        }
    }
    let expected_total =
        tally.deposited.load(Ordering::Relaxed) - tally.withdrawn.load(Ordering::Relaxed);
    let conserved = total == expected_total;
    let events_written = bank
        .store()
        .count_events(Position::START)
        .await
        .map_err(fail)?
        - events_before;
    let commands = tally.commands.load(Ordering::Relaxed);
    // Counted in the store: the process manager's commands take snapshots too.
    let snapshots_taken = bank
        .store()
        .stats()
        .await
        .map_err(fail)?
        .snapshots
        .unwrap_or(0)
        - snapshots_before;
    let rate = f64::from(args.operations) / load_time.as_secs_f64().max(1e-9);
    let ok = mismatches.is_empty() && conserved && pending == 0;

    let summary = json!({
        "store": bank.description(),
        "accounts": args.accounts,
        "operations": args.operations,
        "concurrency": args.concurrency,
        "commands": commands,
        "rejected": tally.rejected.load(Ordering::Relaxed),
        "commands_per_second": rate,
        "load_seconds": load_time.as_secs_f64(),
        "settle_seconds": settle_time.as_secs_f64(),
        "events_written": events_written,
        "snapshots_taken": tally.snapshots.load(Ordering::Relaxed),
        "streams_with_new_snapshot": snapshots_taken,
        "transfers": {
            "requested": transfers.len(),
            "completed": completed,
            "refused_at_debit": refused,
            "refunded": refunded,
            "pending": pending,
        },
        "rebuild": { "events": replayed, "seconds": rebuild_time.as_secs_f64() },
        "invariants": {
            "read_model_matches_streams": mismatches.is_empty(),
            "money_conserved": conserved,
            "total_balance_cents": total,
            "expected_total_cents": expected_total,
            "all_transfers_finished": pending == 0,
        },
        "ok": ok,
    });
    let rejected = tally.rejected.load(Ordering::Relaxed);
    let text = {
        let mut t = String::new();
        t.push_str(&format!(
            "operations       {} in {:.2} s: {rate:.0} commands/s ({rejected} rejected)\n",
            args.operations,
            load_time.as_secs_f64()
        ));
        t.push_str(&format!("events written   {events_written}\n"));
        t.push_str(&format!(
            "snapshots taken  {} by the demo's commands; {snapshots_taken} streams got one\n",
            tally.snapshots.load(Ordering::Relaxed)
        ));
        t.push_str(&format!(
            "transfers        {} requested: {completed} completed, {refused} refused (no funds), {refunded} refunded (no destination), {pending} pending\n",
            transfers.len()
        ));
        t.push_str(&format!(
            "settled after    {:.2} s\n",
            settle_time.as_secs_f64()
        ));
        t.push_str(&format!(
            "rebuild          accounts read model (balances, history): {replayed} events in {:.3} s\n",
            rebuild_time.as_secs_f64()
        ));
        t.push_str(&format!(
            "invariants       read model = streams: {}; money conserved: {} (total {} = deposits - withdrawals {}); all transfers finished: {}\n",
            if mismatches.is_empty() { "yes" } else { "NO" },
            if conserved { "yes" } else { "NO" },
            format_cents(total),
            format_cents(expected_total),
            if pending == 0 { "yes" } else { "NO" },
        ));
        for m in mismatches.iter().take(10) {
            t.push_str(&format!("  mismatch {m}\n"));
        }
        t
    };
    crate::print(json, summary, || text)?;
    if ok {
        Ok(())
    } else {
        Err((3, "the invariant check failed".into()))
    }
}
