//! `bank`: the bank-account example of the cqrs framework.
//!
//! ```text
//! bank [--store <url>] [--json] <command>
//!
//!   open <account> [--owner <name>]      open an account
//!   deposit <account> <amount>           put money in (12, 12.5, 12.50)
//!   withdraw <account> <amount>          take money out
//!   close <account>                      close an account (balance must be zero)
//!   transfer <from> <to> <amount>        move money; a process manager debits, credits,
//!                                        and refunds the source if the credit fails
//!   balance <account>                    the balance, from the read model
//!   history <account>                    the account's history, from the read model
//!   accounts                             every account
//!   demo [--accounts N] [--operations M] [--concurrency C]
//!                                        the main job: a random workload, then a summary
//!                                        and an invariant check
//!   serve [--addr 127.0.0.1:8080]        the HTTP API (JSON), projections in the background
//!   snapshot | replay | events | stats   the framework's operations subcommand
//! ```
//!
//! Stores: `sled:<path>` (the default, `sled:./bank-data`, also from `BANK_STORE`),
//! `postgres://…`, `memory:`.
//!
//! Exit codes: 0 done; 1 rejected by the domain (insufficient funds, unknown account,
//! already open…), the reason on stderr; 2 bad usage or input; 3 store failure.
//!
//! Run it: `cargo run --release -p example-bank-account -- demo`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cqrs_cli::OpsCommand;
use example_bank_account::domain::{Cents, format_cents};
use example_bank_account::{Bank, BankError};
use serde_json::json;

mod demo;

#[derive(Debug, Parser)]
#[command(
    name = "bank",
    version,
    about = "The bank-account example of the cqrs framework"
)]
struct Cli {
    /// Where events are stored: `sled:PATH`, `postgres://…` or `memory:`.
    #[arg(
        long,
        env = "BANK_STORE",
        default_value = "sled:./bank-data",
        global = true
    )]
    store: String,
    /// Print one JSON document on standard output instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

fn amount(text: &str) -> Result<Cents, String> {
    text.parse::<Cents>().map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open an account.
    Open {
        /// The account id.
        account: String,
        /// The owner's name (default: the account id).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Deposit money.
    Deposit {
        /// The account id.
        account: String,
        /// The amount: 12, 12.5 or 12.50.
        #[arg(value_parser = amount)]
        amount: Cents,
    },
    /// Withdraw money.
    Withdraw {
        /// The account id.
        account: String,
        /// The amount: 12, 12.5 or 12.50.
        #[arg(value_parser = amount)]
        amount: Cents,
    },
    /// Close an account (its balance must be zero).
    Close {
        /// The account id.
        account: String,
    },
    /// Transfer money between two accounts.
    Transfer {
        /// The source account.
        from: String,
        /// The destination account.
        to: String,
        /// The amount: 12, 12.5 or 12.50.
        #[arg(value_parser = amount)]
        amount: Cents,
    },
    /// Show an account's balance.
    Balance {
        /// The account id.
        account: String,
    },
    /// Show an account's history.
    History {
        /// The account id.
        account: String,
    },
    /// List every account.
    Accounts,
    /// Run a random workload and check the invariants: the main job for a new user.
    Demo(demo::DemoArgs),
    /// Serve the HTTP API (JSON), running the projections in the background.
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
    },
    #[command(flatten)]
    Ops(OpsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bank: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("bank: {message}");
            ExitCode::from(code)
        }
    }
}

fn fail(e: BankError) -> (u8, String) {
    (e.exit_code(), e.to_string())
}

fn print(
    json: bool,
    document: serde_json::Value,
    text: impl FnOnce() -> String,
) -> Result<(), (u8, String)> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(out, "{document:#}")
    } else {
        write!(out, "{}", text())
    };
    written.map_err(|e| (3, format!("cannot write the output: {e}")))
}

async fn run(cli: Cli) -> Result<(), (u8, String)> {
    let bank = Bank::open(&cli.store).await.map_err(fail)?;
    let json = cli.json;
    match cli.command {
        Command::Open { account, owner } => {
            let owner = owner.unwrap_or_else(|| account.clone());
            bank.open_account(&account, &owner).await.map_err(fail)?;
            bank.sync().await.map_err(fail)?;
            print(
                json,
                json!({ "account": account, "owner": owner, "opened": true }),
                || format!("opened account {account} for {owner}\n"),
            )
        }
        Command::Deposit { account, amount } => {
            bank.deposit(&account, amount).await.map_err(fail)?;
            balance(&bank, &account, json).await
        }
        Command::Withdraw { account, amount } => {
            bank.withdraw(&account, amount).await.map_err(fail)?;
            balance(&bank, &account, json).await
        }
        Command::Close { account } => {
            bank.close(&account).await.map_err(fail)?;
            bank.sync().await.map_err(fail)?;
            print(json, json!({ "account": account, "closed": true }), || {
                format!("closed account {account}\n")
            })
        }
        Command::Transfer { from, to, amount } => {
            let outcome = bank.transfer(&from, &to, amount).await.map_err(fail)?;
            let document = serde_json::to_value(&outcome).map_err(|e| (3, e.to_string()))?;
            print(json, document, || match &outcome.reason {
                None => format!(
                    "transfer {} of {amount} from {from} to {to}: {}\n",
                    outcome.transfer_id,
                    outcome.status.as_str()
                ),
                Some(reason) => format!("transfer {} failed: {reason}\n", outcome.transfer_id),
            })?;
            match outcome.reason {
                // A failed transfer is a domain outcome: exit 1, the reason on stderr.
                Some(reason) => Err((1, format!("transfer failed: {reason}"))),
                None => Ok(()),
            }
        }
        Command::Balance { account } => balance(&bank, &account, json).await,
        Command::History { account } => {
            let history = bank.history(&account).await.map_err(fail)?;
            let document = json!({ "account": account, "history": history });
            print(json, document, || {
                let mut text = String::new();
                for h in &history {
                    let other = h
                        .counterparty
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default();
                    text.push_str(&format!(
                        "v{:<5} {:<13} {:>14} {:>14}{other}\n",
                        h.version,
                        h.kind,
                        format_cents(h.amount_cents),
                        format_cents(h.balance_cents)
                    ));
                }
                text
            })
        }
        Command::Accounts => {
            let accounts = bank.list_accounts().await.map_err(fail)?;
            let rows: Vec<_> = accounts
                .iter()
                .map(example_bank_account::http::account_json)
                .collect();
            let document = json!({ "accounts": rows });
            print(json, document, || {
                let mut text = String::new();
                for a in &accounts {
                    text.push_str(&format!(
                        "{:<20} {:<20} {:>14} {}\n",
                        a.account,
                        a.owner,
                        format_cents(a.balance_cents),
                        a.status.as_str()
                    ));
                }
                text.push_str(&format!("{} account(s)\n", accounts.len()));
                text
            })
        }
        Command::Demo(args) => demo::run(&bank, &args, json).await,
        Command::Serve { addr } => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| (3, format!("cannot listen on {addr}: {e}")))?;
            eprintln!(
                "bank: serving on http://{addr} (store: {}); Ctrl-C stops",
                bank.description()
            );
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            example_bank_account::http::serve(bank, listener, shutdown)
                .await
                .map_err(fail)
        }
        Command::Ops(command) => {
            // No catch-up first: `stats` and `events` must work when a projection is stuck
            // (that is when they are needed). A replay must not run beside a live worker
            // of the same projection in another process.
            let _locks = if matches!(command, cqrs_cli::OpsCommand::Replay(_)) {
                bank.lock_projections().await.map_err(fail)?
            } else {
                Vec::new()
            };
            let mut out = std::io::stdout().lock();
            bank.operations()
                .run(&command, json, &mut out)
                .await
                .map_err(|e| (e.exit_code(), example_bank_account::full_chain(&e)))
        }
    }
}

async fn balance(bank: &Bank, account: &str, json: bool) -> Result<(), (u8, String)> {
    let row = bank.balance(account).await.map_err(fail)?;
    let document = json!({
        "account": row.account,
        "owner": row.owner,
        "status": row.status,
        "balance_cents": row.balance_cents,
        "balance": format_cents(row.balance_cents),
        "version": row.version,
    });
    print(json, document, || {
        format!("{}: {}\n", row.account, format_cents(row.balance_cents))
    })
}
