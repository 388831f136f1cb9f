//! `bank demo`: a random workload of deposits, withdrawals and transfers, then a summary
//! and an invariant check.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use cqrs_core::{Inspect, Position};
use example_bank_account::domain::AccountCommand::{self, Deposit, Withdraw};
use example_bank_account::domain::{Cents, TransferStatus};
use example_bank_account::{Bank, BankError};
use serde_json::json;
use uuid::Uuid;

use crate::print;

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
    /// Records metrics into a Prometheus recorder, as `serve` does (to measure the cost).
    #[arg(long)]
    metrics: bool,
}

/// What the demo did.
#[derive(Debug, Default)]
struct Tally {
    rejected: u64,
    /// Money in minus money out, in cents.
    net: i64,
    transfers: Vec<Uuid>,
    /// The log position of the last event written.
    last: Position,
}

/// The demo's bank, accounts and tally, shared by its tasks.
#[derive(Debug, Clone)]
struct Demo {
    bank: Bank,
    ids: Arc<Vec<String>>,
    tally: Arc<Mutex<Tally>>,
}

impl Demo {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs an account command and counts it; a refused withdrawal is counted, not an
    /// error.
    async fn account(&self, id: &str, command: AccountCommand) -> Result<(), BankError> {
        let net = match &command {
            Deposit(amount) => amount.get(),
            Withdraw(amount) => -amount.get(),
            _ => 0,
        };
        let done = self.bank.accounts().execute(id, &command).await;
        let mut tally = self.tally();
        match done {
            Ok(done) => {
                tally.net += net;
                tally.last = tally.last.max(done.position.unwrap_or_default());
            }
            Err(e) if e.is_rejected() => tally.rejected += 1,
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// One task's share of the workload, from a generator seeded per task (xorshift64*):
    /// 45% deposits, 35% withdrawals, 20% transfers, one in twenty of them to an account
    /// that does not exist (refused before anything is written: counted as rejected).
    async fn work(self, seed: u64, operations: u32) -> Result<(), BankError> {
        let mut state = 0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let mut below = |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            usize::try_from(state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64).unwrap_or(0)
        };
        let ids = &self.ids;
        for _ in 0..operations {
            let (source, dice) = (below(ids.len()), below(100));
            let most = [20_000, 40_000, 30_000][usize::from(dice >= 45) + usize::from(dice >= 80)];
            let (id, amount) = (&ids[source], cents(1 + below(most)));
            if dice < 45 {
                self.account(id, Deposit(amount)).await?;
            } else if dice < 80 {
                self.account(id, Withdraw(amount)).await?;
            } else {
                let to = match below(20) {
                    0 => "demo-missing".to_owned(),
                    // Any other account: an offset of 1..len from the source.
                    _ => ids[(source + 1 + below(ids.len() - 1)) % ids.len()].clone(),
                };
                match self.bank.request_transfer(id, &to, amount).await {
                    Ok(transfer_id) => self.tally().transfers.push(transfer_id),
                    Err(e) if e.is_not_found() => self.tally().rejected += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// An amount of the demo (up to 100,000 cents).
fn cents(cents: usize) -> Cents {
    let cents = Cents::new(i64::try_from(cents).unwrap_or(1));
    cents.unwrap_or_else(|_| unreachable!("up to 100,000 cents"))
}

/// Runs the demo, prints its summary, and returns whether the invariants hold.
pub(crate) async fn run(bank: &Bank, args: &DemoArgs) -> Result<bool, BankError> {
    if args.accounts < 2 || args.concurrency == 0 {
        let usage = "demo needs 2 accounts and 1 task or more";
        return Err(BankError::InvalidInput(usage.into()));
    }
    if args.metrics {
        // Installed for the rest of the process; its upkeep drains the histograms.
        crate::install_metrics().map_err(|e| BankError::store(e.1))?;
    }
    let events_before = bank.store().count_events(Position::START).await?;
    // Open the accounts (ids unique to the run), each with 1,000.00.
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let ids = (0..args.accounts).map(|i| format!("demo-{run}-{i:04}"));
    let (ids, tally, bank) = (Arc::new(ids.collect()), Arc::default(), bank.clone());
    let demo = Demo { bank, ids, tally };
    for id in demo.ids.iter() {
        demo.account(
            id,
            AccountCommand::open(id.as_str(), format!("owner of {id}")),
        )
        .await?;
        demo.account(id, Deposit(cents(100_000))).await?;
    }
    let bank = &demo.bank;

    // The process manager follows the log live while the load runs.
    let (started, mut tasks) = (Instant::now(), Vec::new());
    let (operations, concurrency) = (args.operations, args.concurrency);
    for task in 0..concurrency {
        let share = operations / concurrency + u32::from(task < operations % concurrency);
        tasks.push(tokio::spawn(demo.clone().work(u64::from(task), share)));
    }
    for task in tasks {
        task.await.map_err(BankError::store)??;
    }
    let load_time = started.elapsed().as_secs_f64();
    let tally = std::mem::take(&mut *demo.tally());

    // Wait until every transfer has ended and the read model shows everything.
    let (mut completed, mut pending) = (0, 0);
    for transfer_id in &tally.transfers {
        let outcome = bank.finished(*transfer_id).await?;
        completed += u64::from(outcome.status == TransferStatus::Completed);
        pending += u64::from(outcome.status == TransferStatus::Pending);
    }
    bank.read_model().wait_for(tally.last).await?;
    let settle_time = started.elapsed().as_secs_f64();

    // Invariants: the read model equals the streams, and no money was created or lost.
    let (mut mismatches, mut total) = (Vec::new(), 0);
    for id in demo.ids.iter() {
        let in_stream = bank.accounts().load(id).await?.state.balance;
        let in_view = bank.balance(id).await?.balance_cents;
        if in_stream != in_view {
            mismatches.push(format!("{id}: stream {in_stream}, read model {in_view}"));
        }
        total += in_stream;
    }
    let events = bank.store().count_events(Position::START).await?;
    let ok = mismatches.is_empty() && total == tally.net && pending == 0;
    let summary = json!({
        "accounts": args.accounts,
        "metrics": args.metrics,
        "operations": operations,
        "rejected": tally.rejected,
        "commands_per_second": (f64::from(operations) / load_time.max(1e-9)).round(),
        "settle_seconds": settle_time,
        "events_written": events - events_before,
        "transfers": {
            "requested": tally.transfers.len(),
            "completed": completed,
            "failed": tally.transfers.len() as u64 - completed - pending,
            "pending": pending,
        },
        "invariants": {
            "read_model_matches_streams": mismatches.is_empty(),
            "mismatches": &mismatches[..mismatches.len().min(10)],
            "money_conserved": total == tally.net,
        },
        "ok": ok,
    });
    print(&summary).map_err(|e| BankError::store(e.1))?;
    Ok(ok)
}
