//! `statements`: the statements service, a second service of the cqrs framework's
//! examples. It keeps per account of the bank monthly totals in and out, the running
//! balance and the last event applied, in a database of its own, from the bank's events
//! published to NATS JetStream, RabbitMQ or Kafka by `bank relay` (or
//! `bank serve --relay-to`).
//!
//! ```text
//! statements [--store <url>] [--json] [--server http://HOST:PORT] <command>
//!
//!   consume --from nats://…|amqp://…|kafka://… [--stream BANK_EVENTS] [--durable statements]
//!           [--prefix bank] [--instance ID]
//!                                        apply the bank's events until SIGINT/SIGTERM
//!   serve --from nats://… [--addr 127.0.0.1:8090] [same options as consume]
//!                                        consume, and answer reads over HTTP (JSON)
//!   show <account>                       an account's statement
//!   dead-letters list | redrive          the messages the consumer could not apply
//!   stats                                streams, parked streams, dead letters
//! ```
//!
//! Stores: `sled:<path>` (the default, `sled:./statements-data`, also from
//! `STATEMENTS_STORE`) or `postgres://…?schema=NAME` (default schema `statements`).
//! A sled database is held by the process that consumes: while `consume` or `serve`
//! runs, ask it with `--server http://127.0.0.1:8090` (`serve` answers; `show`,
//! `dead-letters` and `stats` are its clients). On PostgreSQL every command reads the
//! tables directly, while a consumer runs in another process.
//!
//! Exit codes: 0 done; 1 not found (no statement for the account); 2 bad usage or input;
//! 3 store, broker or server failure.
//!
//! Run it: `cargo run -p example-bank-statements -- serve --from nats://127.0.0.1:4222`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use example_bank_statements::error::full_chain;
use example_bank_statements::http::{letters_json, redrive_json, stats_json};
use example_bank_statements::service::Source;
use example_bank_statements::{Error, Result, Service, StatementsStore, client};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;

mod text;

/// The statements service of the cqrs framework's examples.
#[derive(Debug, Parser)]
#[command(name = "statements", version)]
struct Cli {
    /// The service's own database: `sled:PATH` or `postgres://…?schema=NAME`.
    #[arg(
        long,
        env = "STATEMENTS_STORE",
        default_value = "sled:./statements-data",
        global = true
    )]
    store: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Ask a running `statements serve` at this address (`http://HOST:PORT`) instead of
    /// reading the database (needed on sled while it runs).
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the bank's events from the broker until SIGINT or SIGTERM.
    Consume(From),
    /// Consume, and answer reads over HTTP until SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        from: From,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        addr: std::net::SocketAddr,
    },
    /// Show an account's statement.
    Show {
        /// The account id.
        account: String,
    },
    /// The dead letters: messages the consumer could not apply.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// The inbox's counts (and the consumer's, from a server).
    Stats,
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// List them.
    List,
    /// Apply them again (those that still fail stay).
    Redrive,
}

/// Where the bank's events come from.
#[derive(Debug, Args)]
struct From {
    /// The broker: `nats://HOST:PORT`, `amqp://USER:PASS@HOST:PORT/VHOST` or
    /// `kafka://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The JetStream stream, RabbitMQ exchange or Kafka topic the bank's relay
    /// publishes to.
    #[arg(long, default_value = "BANK_EVENTS")]
    stream: String,
    /// The durable consumer's name on the broker (the RabbitMQ queue's, the Kafka
    /// consumer group's).
    #[arg(long, default_value = "statements")]
    durable: String,
    /// The bank's subject prefix (its `bank relay --prefix`).
    #[arg(long, default_value = "bank")]
    prefix: String,
    /// Kafka only: this process's static member id in the consumer group, stable
    /// across its restarts and unique among the group's processes.
    #[arg(long, env = "STATEMENTS_INSTANCE")]
    instance: Option<String>,
}

impl From {
    fn source(self) -> Source {
        Source {
            url: self.from,
            stream: self.stream,
            durable: self.durable,
            prefix: self.prefix,
            instance: self.instance,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("statements: {}", full_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints `document`: as JSON with `--json`, else as text.
fn print(document: &Value, json: bool, text: fn(&Value) -> String) -> Result<()> {
    let out = match json {
        true => format!("{document:#}"),
        false => text(document),
    };
    let written = writeln!(std::io::stdout().lock(), "{out}");
    written.map_err(|e| Error::store("writing the output", e))
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    if let Some(server) = &cli.server {
        let (method, path, text): (_, _, fn(&Value) -> String) = match &cli.command {
            Command::Show { account } => (
                "GET",
                format!("/accounts/{}/statement", percent_encode(account)),
                text::statement,
            ),
            Command::DeadLetters(DeadLetters::List) => {
                ("GET", "/dead-letters".to_owned(), text::letters)
            }
            Command::DeadLetters(DeadLetters::Redrive) => {
                ("POST", "/dead-letters/redrive".to_owned(), text::redrive)
            }
            Command::Stats => ("GET", "/stats".to_owned(), text::stats),
            Command::Consume(_) | Command::Serve { .. } => {
                return Err(Error::invalid(
                    "--server is for show, dead-letters and stats",
                ));
            }
        };
        let answer = client::request(server, method, &path).await?;
        return print(&answer, json, text);
    }
    match cli.command {
        Command::Consume(from) => {
            let source = from.source();
            source.check()?;
            init_logs();
            let store = StatementsStore::open(&cli.store).await?;
            let shutdown = shutdown()?;
            let service = Service::start(&store, &source).await?;
            eprintln!("statements: consuming; Ctrl-C or SIGTERM stops");
            service.run_until(shutdown).await.map(drop)
        }
        Command::Serve { from, addr } => {
            let source = from.source();
            source.check()?;
            init_logs();
            let metrics = install_metrics()?;
            let store = StatementsStore::open(&cli.store).await?;
            let listener = tokio::net::TcpListener::bind(addr).await;
            let listener = listener.map_err(|e| Error::store(format!("listening on {addr}"), e))?;
            let shutdown = shutdown()?;
            let service = Service::start(&store, &source).await?;
            let app =
                example_bank_statements::http::router(store, service.control(), Some(metrics));
            tracing::info!(%addr, "serving");
            eprintln!("statements: serving on http://{addr}; Ctrl-C or SIGTERM stops");
            // The server stops when the consumer does: on the signal, or when its
            // subscription is gone (then with its error, exit 3).
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let consuming = async move {
                let ran = service.run_until(shutdown).await;
                let _ = stop.send(());
                ran
            };
            let config = cqrs_http::ServeConfig::default();
            let stopped = async {
                let _ = stopped.await;
            };
            let serving = cqrs_http::serve(listener, app, config, stopped);
            let (ran, ()) = tokio::join!(consuming, serving);
            ran.map(drop)
        }
        Command::Show { account } => {
            let store = StatementsStore::open(&cli.store).await?;
            let statement = store.statement(&account).await?;
            print(&statement.to_json(), json, text::statement)
        }
        Command::DeadLetters(DeadLetters::List) => {
            let store = StatementsStore::open(&cli.store).await?;
            let letters = store.dead_letters().await?;
            print(&letters_json(&letters), json, text::letters)
        }
        Command::DeadLetters(DeadLetters::Redrive) => {
            let store = StatementsStore::open(&cli.store).await?;
            let report = store.redrive().await?;
            print(&redrive_json(&report), json, text::redrive)
        }
        Command::Stats => {
            let store = StatementsStore::open(&cli.store).await?;
            let stats = store.stats().await?;
            print(&stats_json(stats, None), json, text::stats)
        }
    }
}

/// SIGINT or SIGTERM.
fn shutdown() -> Result<impl Future<Output = ()> + Send + 'static> {
    cqrs_http::shutdown_signal().map_err(|e| Error::store("installing the signal handlers", e))
}

/// The log (`tracing`, level info) on standard error.
fn init_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
}

/// Installs the Prometheus recorder: the consumer's metrics for `/metrics` and `/stats`.
fn install_metrics() -> Result<PrometheusHandle> {
    let installed = PrometheusBuilder::new().install_recorder();
    let handle = installed.map_err(|e| Error::store("installing the metrics recorder", e))?;
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

/// An account id as one path segment: ASCII letters, digits, `-`, `_`, `.` and `~`
/// stay, every other byte is `%XX`.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
