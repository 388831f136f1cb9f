//! `bank`: the bank-account example of the cqrs framework.
//!
//! ```text
//! bank [--store <url>] [--tenant <name>] [--json] [--daily-limit <amount>] [--command-id <key>] <command>
//!
//!   open <account> [--owner <name>]      open an account
//!   deposit <account> <amount>           put money in (12, 12.5, 12.50)
//!   withdraw <account> <amount>          take money out (at most --daily-limit a day)
//!   close <account>                      close an account (balance must be zero)
//!   forget <account>                     erase the owner's name for good (GDPR article
//!                                        17): it reads "(erased)" everywhere after
//!   transfer <from> <to> <amount>        move money; a process manager debits, credits,
//!                                        and refunds the source if the credit fails
//!   balance <account>                    the balance, from the read model
//!   history <account>                    the account's history, from the read model
//!   accounts                             every account
//!   demo [--accounts N] [--operations M] [--concurrency C] [--metrics]
//!                                        the main job: a random workload, then a summary
//!                                        and an invariant check
//!   serve [--addr 127.0.0.1:8080] [--ready-max-lag 1000] [--log-format text|json]
//!         [--console-token <token>]      the HTTP API (JSON), /metrics (Prometheus),
//!         [--relay-to nats://HOST:PORT]  /health/live, /health/ready, the operations
//!                                        console at /console; with the relay
//!   relay --to nats://…|amqp://…|kafka://… [--stream BANK_EVENTS] [--prefix bank]
//!                                        publish the events to a broker until stopped
//!   snapshot | replay | events | stats   the framework's operations subcommand
//!   tenants create <name> | list | migrate
//!                                        the store's tenants; `--tenant <name>` runs
//!                                        any command on one (default: none)
//! ```
//!
//! Stores: `sled:<path>` (the default, `sled:./bank-data`, also from `BANK_STORE`),
//! `postgres://…`, `memory:`. Each command prints one JSON document; `--json` makes the
//! operations subcommand print JSON too.
//!
//! A command's answer is the account as the command left it (or the transfer's outcome)
//! and `read_model`: whether reads show it yet. A committed command exits 0 even when
//! the read model is behind. `--command-id` (a UUID or any text) makes a command safe to
//! retry: run again with the same id, it writes nothing and prints the same answer.
//!
//! Exit codes: 0 done; 1 rejected by the domain (insufficient funds, unknown account,
//! already open…), the reason on stderr; 2 bad usage or input; 3 store failure.
//!
//! Run it: `cargo run --release -p example-bank-account -- demo`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cqrs_cli::OpsCommand;
use cqrs_core::TenantId;
use cqrs_sled::DamagedLog;
use example_bank_account::domain::{AccountCommand, AccountServices, Cents};
use example_bank_account::tenants::Tenants;
use example_bank_account::{Bank, BankError, full_chain};
use futures::FutureExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};

mod demo;
mod relay;

/// The bank-account example of the cqrs framework.
#[derive(Debug, Parser)]
#[command(name = "bank", version)]
struct Cli {
    /// Where events are stored: `sled:PATH`, `postgres://…` or `memory:`.
    #[arg(
        long,
        env = "BANK_STORE",
        default_value = "sled:./bank-data",
        global = true
    )]
    store: String,
    /// Run the command on this tenant's store (created with `bank tenants create`);
    /// without it, on the store itself (the default tenant).
    #[arg(long, env = "BANK_TENANT", global = true, value_parser = tenant)]
    tenant: Option<TenantId>,
    /// The operations subcommand prints JSON instead of text (the others always do).
    #[arg(long, global = true)]
    json: bool,
    /// The most one account may withdraw in a day.
    #[arg(long, env = "BANK_DAILY_LIMIT", default_value = "10000.00", value_parser = amount, global = true)]
    daily_limit: Cents,
    /// Makes the command idempotent: a UUID or any text (its UUIDv5). The same id again
    /// applies nothing and prints the first run's answer.
    #[arg(long, global = true, value_name = "KEY", value_parser = command_id)]
    command_id: Option<uuid::Uuid>,
    /// How `serve` writes its log on standard error: `text` or `json` (one object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn command_id(key: &str) -> Result<uuid::Uuid, String> {
    match key {
        "" => Err("a command id must not be empty".into()),
        key => Ok(cqrs_core::CommandOptions::id_from_key(key)),
    }
}

fn tenant(name: &str) -> Result<TenantId, String> {
    name.parse()
        .map_err(|e: cqrs_core::InvalidTenantId| e.to_string())
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
    Deposit(Money),
    /// Withdraw money.
    Withdraw(Money),
    /// Close an account (its balance must be zero).
    Close(Id),
    /// Forget an account's owner (GDPR erasure): the owner's name reads `(erased)` from
    /// now on, everywhere; the account and its money stay.
    Forget(Id),
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
    Balance(Id),
    /// Show an account's history.
    History(Id),
    /// List every account.
    Accounts,
    /// Run a random workload and check the invariants: the main job for a new user.
    Demo(demo::DemoArgs),
    /// Serve the HTTP API (JSON).
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// `/health/ready` fails while the read model is more events behind than this.
        #[arg(long, default_value_t = example_bank_account::http::DEFAULT_READY_MAX_LAG)]
        ready_max_lag: u64,
        /// The token the console's actions (replay, snapshot) need, at /console/actions;
        /// without it they are refused.
        #[arg(long, env = "BANK_CONSOLE_TOKEN", hide_env_values = true)]
        console_token: Option<String>,
        #[command(flatten)]
        relay: relay::ServeRelayArgs,
    },
    /// Publish the events to a message broker until SIGINT or SIGTERM (the relay).
    Relay(relay::RelayArgs),
    /// Manage the tenants of the store.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    #[command(flatten)]
    Ops(OpsCommand),
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Create a tenant (and migrate its store); an existing one is left as it is.
    Create {
        /// Lowercase letters, digits and `_`, starting with a letter; at most 40.
        #[arg(value_parser = tenant)]
        name: TenantId,
    },
    /// List the tenants.
    List,
    /// Migrate every tenant's store to this release.
    Migrate,
}

#[derive(Debug, Args)]
struct Id {
    /// The account id.
    account: String,
}

#[derive(Debug, Args)]
struct Money {
    /// The account id.
    account: String,
    /// The amount: 12, 12.5 or 12.50.
    #[arg(value_parser = amount)]
    amount: Cents,
}

/// A failure: the exit code and the message for standard error.
#[derive(Debug)]
struct Failure(u8, String);

impl From<BankError> for Failure {
    /// The exit code is chosen by the error's predicates.
    fn from(e: BankError) -> Self {
        let code = match () {
            () if e.is_rejected() || e.is_gone() => 1,
            () if e.is_invalid_input() => 2,
            () => 3,
        };
        Failure(code, full_chain(&e))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // No panic text or backtrace on the terminal: a panic is logged through `tracing`,
    // and one that escapes the run is one line and exit 3 (a store failure).
    std::panic::set_hook(Box::new(example_bank_account::error::log_panic));
    let cli = Cli::parse();
    let ran = std::panic::AssertUnwindSafe(run(cli)).catch_unwind().await;
    let Err(Failure(code, message)) = ran.unwrap_or_else(|panic| {
        let message = example_bank_account::error::panic_message(&*panic);
        Err(Failure(3, format!("internal error: {message}")))
    }) else {
        return ExitCode::SUCCESS;
    };
    eprintln!("bank: {message}");
    ExitCode::from(code)
}

/// Prints `document` on standard output.
fn print(document: &Value) -> Result<(), Failure> {
    let written = writeln!(std::io::stdout().lock(), "{document:#}");
    written.map_err(|e| Failure(3, format!("cannot write the output: {e}")))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // `verify` opens a sled store that lost events anyway, to list what was lost.
    let damaged = match cli.command {
        Command::Ops(OpsCommand::Verify) => DamagedLog::Inspect,
        _ => DamagedLog::Refuse,
    };
    // `serve` exports metrics: the recorder goes in before anything records.
    let metrics = match cli.command {
        Command::Serve { .. } => Some(install_metrics()?),
        _ => None,
    };
    if let Command::Tenants(command) = &cli.command {
        return tenants(&cli.store, command).await;
    }
    let services = AccountServices::new(cli.daily_limit);
    let tenant = cli.tenant.as_ref();
    let bank = Bank::open_tenant(&cli.store, tenant, services, damaged).await?;
    // The operations run without the projections: `stats` and `events` must work when a
    // projection is stuck (that is when they are needed), and a replay must run alone.
    if !matches!(cli.command, Command::Ops(_)) {
        bank.start();
    }
    let (json, id, logs) = (cli.json, cli.command_id, cli.log_format);
    let result = command(&bank, cli.command, json, id, (logs, metrics)).await;
    result.and(Ok(bank.stop().await?))
}

/// `bank tenants …`: prints `{"tenants": [...]}` (and `created` or `migrated`).
async fn tenants(url: &str, command: &TenantsCommand) -> Result<(), Failure> {
    let tenants = Tenants::of(url).await?;
    let document = match command {
        TenantsCommand::Create { name } => {
            tenants.create(name).await?;
            json!({ "created": name.as_str() })
        }
        TenantsCommand::List => {
            let names: Vec<String> = tenants
                .list()
                .await?
                .iter()
                .map(|t| t.to_string())
                .collect();
            json!({ "tenants": names })
        }
        TenantsCommand::Migrate => json!({ "migrated": tenants.migrate().await? }),
    };
    print(&document)
}

/// Installs the Prometheus recorder (true histograms for `_seconds`) with its upkeep
/// every 5 s, and returns its handle (which renders it for `/metrics`).
fn install_metrics() -> Result<PrometheusHandle, Failure> {
    let seconds = Matcher::Suffix("_seconds".into());
    let builder =
        PrometheusBuilder::new().set_buckets_for_metric(seconds, cqrs_core::SECONDS_BUCKETS);
    let installed = builder.and_then(PrometheusBuilder::install_recorder);
    let handle = installed.map_err(|e| Failure(3, format!("cannot install metrics: {e}")))?;
    cqrs_core::describe_metrics();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Sends the log (`tracing`, level info) to standard error, as text or JSON lines.
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Prints a command's answer, and on standard error what a person should know about it.
fn print_done(document: &Value, already_applied: bool) -> Result<(), Failure> {
    if already_applied {
        eprintln!("bank: already applied (same command id): nothing written");
    }
    if document["read_model"]["current"] == json!(false) {
        eprintln!("bank: done; the read model does not show it yet (it is behind)");
    }
    print(document)
}

async fn command(
    bank: &Bank,
    command: Command,
    json: bool,
    command_id: Option<uuid::Uuid>,
    (log_format, metrics): (LogFormat, Option<PrometheusHandle>),
) -> Result<(), Failure> {
    let (id, command) = match command {
        Command::Open { account, owner } => {
            let owner = owner.unwrap_or_else(|| account.clone());
            (account.clone(), AccountCommand::open(account, owner))
        }
        Command::Deposit(Money { account, amount }) => (account, AccountCommand::Deposit(amount)),
        Command::Withdraw(Money { account, amount }) => (account, AccountCommand::Withdraw(amount)),
        Command::Close(Id { account }) => (account, AccountCommand::Close),
        Command::Forget(Id { account }) => {
            let forgotten = bank.forget(&account).await?;
            if forgotten.already_forgotten {
                eprintln!("bank: already forgotten: nothing changed");
            }
            return print(&json!(forgotten));
        }
        Command::Balance(Id { account }) => {
            return print(&bank.with_status(json!(bank.balance(&account).await?)).await);
        }
        Command::Transfer { from, to, amount } => {
            let outcome = bank.transfer_with(&from, &to, amount, command_id).await?;
            print_done(&json!(outcome), false)?;
            // A failed transfer is a domain outcome: exit 1, the reason on stderr.
            let failed = |reason| Failure(1, format!("transfer failed: {reason}"));
            return outcome.reason.map_or(Ok(()), |reason| Err(failed(reason)));
        }
        Command::History(Id { account }) => {
            let history = json!({ "account": account, "history": bank.history(&account).await? });
            return print(&bank.with_status(history).await);
        }
        Command::Accounts => {
            let accounts = json!({ "accounts": bank.list_accounts().await? });
            return print(&bank.with_status(accounts).await);
        }
        Command::Demo(args) if demo::run(bank, &args).await? => return Ok(()),
        Command::Demo(_) => return Err(Failure(3, "the invariant check failed".into())),
        Command::Relay(args) => {
            init_logs(log_format);
            let shutdown = cqrs_http::shutdown_signal();
            let shutdown = shutdown.map_err(|e| Failure(3, full_chain(&e)))?;
            return relay::run(bank, &args, shutdown).await;
        }
        Command::Serve {
            addr,
            ready_max_lag,
            console_token,
            relay,
        } => {
            let listener = tokio::net::TcpListener::bind(addr).await;
            let listener =
                listener.map_err(|e| Failure(3, format!("cannot listen on {addr}: {e}")))?;
            let shutdown = cqrs_http::shutdown_signal();
            let shutdown = shutdown.map_err(|e| Failure(3, full_chain(&e)))?;
            // A server's log (a projection stopped and restarted, a contained panic) goes
            // to standard error; the one-shot commands print only their answer.
            init_logs(log_format);
            let relay = match relay.target() {
                Some(target) => Some(relay::Background::start(bank, &target).await?),
                None => None,
            };
            let app = example_bank_account::http::app(bank.clone(), ready_max_lag);
            // The console's live tails end when the shutdown begins (a second listener).
            let closing = cqrs_http::shutdown_signal().map_err(|e| Failure(3, full_chain(&e)))?;
            let console = example_bank_account::http::console(bank, console_token, closing);
            let app = app.merge(console);
            let app = match metrics {
                Some(handle) => app.merge(cqrs_http::metrics_router(move || handle.render())),
                None => app,
            };
            tracing::info!(%addr, "serving");
            eprintln!(
                "bank: serving on http://{addr} (console: http://{addr}/console); Ctrl-C or SIGTERM stops"
            );
            let served =
                example_bank_account::http::serve_app(bank.clone(), app, listener, shutdown);
            let served = served.await;
            if let Some(relay) = relay {
                relay.stop().await?;
            }
            return Ok(served?);
        }
        // Handled by `run` before a bank is opened.
        Command::Tenants(_) => return Err(Failure(3, "tenants: run without a bank".into())),
        Command::Ops(command) => {
            let _lock = match command {
                OpsCommand::Replay(_) => bank.lock_out_others().await?,
                _ => None,
            };
            let (ops, mut out) = (bank.operations(), std::io::stdout().lock());
            let ran = ops.run(&command, json, &mut out).await;
            return ran.map_err(|e| Failure(e.exit_code(), full_chain(&e)));
        }
    };
    let done = bank.execute_with(&id, command, command_id).await?;
    print_done(&json!(done), done.already_applied)
}
