//! The crash test of issue 12: while the bank appends (through `bank` processes on
//! PostgreSQL), `bank relay` and `statements consume` are killed with SIGKILL at
//! random points, round after round, and restarted. At the end the statements read
//! model must equal what the bank's event store says, account by account: the balance,
//! the totals in and out per month, the last version and event applied (so no event
//! lost, none applied twice, the last one last), no dead letter, no parked stream; and
//! the broker holds each event (JetStream exactly once, Kafka at least once).
//!
//! It runs on NATS JetStream (the shared server) and on Kafka (a private tansu broker
//! with its data in a file, also killed and restarted in some rounds).
//!
//! The random choices come from a seed printed at the start; `CRASH_SEED=N` replays
//! them (the processes' timing still varies).
//!
//! Known failure (found by this test): a consumer killed with messages delivered and
//! not acknowledged gets them back only after JetStream's `ack_wait` (60 s); the next
//! consumer holds later events of the same account for its `gap_wait` (30 s), then
//! dead-letters them and parks the account, so the statements stop behind the bank.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::broker::{TestStream, nats_url};
use common::kafka::PrivateKafka;
use common::pg::{Schema, database_url};
use common::{Killed, bank, bank_bin, block_on, statements, statements_bin};
use cqrs_postgres::sqlx::postgres::PgRow;
use cqrs_postgres::sqlx::{self, AssertSqlSafe, Connection, PgConnection, Row};
use serde_json::Value;
use uuid::Uuid;

/// Kill rounds: in each, the relay, the consumer or both are killed and restarted.
const ROUNDS: u32 = 24;

/// How many accounts the bank opens.
const ACCOUNTS: u64 = 20;

/// How many threads append, each one `bank` command at a time.
const APPENDERS: u64 = 2;

/// How long the statements may take to catch up after the last round.
const CATCH_UP: Duration = Duration::from_secs(120);

/// xorshift64*: enough randomness for delays and choices, replayable from its seed.
struct Rng(u64);

impl Rng {
    /// `CRASH_SEED`, or one from the clock.
    fn seed() -> u64 {
        if let Ok(text) = std::env::var("CRASH_SEED") {
            return text.parse().expect("CRASH_SEED: an unsigned integer");
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let nanos = now.expect("a clock after 1970").as_nanos();
        u64::try_from(nanos % u128::from(u64::MAX)).expect("fits") | 1
    }

    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `low..high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.range(low, high))
    }
}

/// What the appenders did.
#[derive(Debug, Default)]
struct Tally {
    commands: u64,
    /// Refused by the bank (exit 1: not enough money, a transfer that failed).
    rejected: u64,
    /// Killed when the appenders were stopped (a transfer waiting for its outcome).
    interrupted: u64,
    /// Any other failure (exit 2 or 3), with the last one's message.
    failed: u64,
    last_failure: String,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.commands += other.commands;
        self.rejected += other.rejected;
        self.interrupted += other.interrupted;
        self.failed += other.failed;
        if other.failed > 0 {
            self.last_failure = other.last_failure;
        }
    }
}

/// The account ids.
fn account(i: u64) -> String {
    format!("acc{i:02}")
}

/// Runs `bank --store STORE ARGS…` and counts its outcome in `tally`. A command still
/// running when `stop` is set (a transfer waits for the process manager, up to 30 s)
/// is killed after a second: what it appended stays in the bank's store, the truth
/// the statements are compared with.
fn bank_command(store: &str, args: &[&str], stop: &AtomicBool, log: &Path, tally: &mut Tally) {
    let mut command = Command::new(bank_bin());
    command.args(["--store", store]).args(args);
    let (mut process, started) = (Killed::start(&mut command, log), Instant::now());
    let mut stopped_at = None;
    let status = loop {
        if let Some(status) = process.child.try_wait().expect("wait for bank") {
            break Some(status);
        }
        if stop.load(Ordering::Relaxed) {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                break None; // the guard kills it
            }
        }
        assert!(
            started.elapsed() < common::COMMAND_DEADLINE,
            "bank {args:?} did not finish within {:?}",
            common::COMMAND_DEADLINE
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    tally.commands += 1;
    match status.map(|s| s.code()) {
        None => tally.interrupted += 1,
        Some(Some(0)) => {}
        Some(Some(1)) => tally.rejected += 1,
        Some(code) => {
            tally.failed += 1;
            tally.last_failure = format!("bank {args:?}: exit {code:?}: {}", process.log());
        }
    }
}

/// The bank's workload in threads of their own, one `bank` process per command:
/// deposits, withdrawals and transfers between the open accounts until stopped.
/// Dropping it stops it (also while a failing test unwinds).
struct Appender {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Appender {
    /// `threads` appenders, their randomness from `rng`, logging in `logs`.
    fn start(store: &str, threads: u64, rng: &mut Rng, logs: &Path) -> Appender {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|n| {
                let (stop, store) = (Arc::clone(&stop), store.to_owned());
                let log = logs.join(format!("bank-{n}.log"));
                let mut rng = Rng::new(rng.next());
                std::thread::spawn(move || {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        let a = account(rng.range(0, ACCOUNTS));
                        // 0.01 to 119.99: the bank refuses a zero amount (bad input).
                        let cents = rng.range(1, 12_000);
                        let amount = format!("{}.{:02}", cents / 100, cents % 100);
                        let args = match rng.range(0, 10) {
                            0..4 => vec!["deposit".to_owned(), a, amount],
                            4..6 => vec!["withdraw".to_owned(), a, amount],
                            _ => {
                                let b = account(rng.range(0, ACCOUNTS));
                                vec!["transfer".to_owned(), a, b, amount]
                            }
                        };
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        bank_command(&store, &args, &stop, &log, &mut tally);
                    }
                    tally
                })
            })
            .collect();
        Appender { stop, threads }
    }

    /// Stops them (see [`bank_command`]); what they did.
    fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for thread in self.threads.drain(..) {
            tally.add(thread.join().expect("an appender panicked"));
        }
        tally
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One account's statement, as the bank's events say it should be or as the
/// statements service has it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Account {
    balance_cents: i64,
    /// Month (`YYYY-MM`, UTC) → (in, out), in cents; months with money only.
    months: BTreeMap<String, (i64, i64)>,
    version: u64,
    event_id: Option<Uuid>,
}

/// Runs `queries` on PostgreSQL in one runtime: their rows, each query's.
fn select(queries: Vec<String>) -> Result<Vec<Vec<PgRow>>, String> {
    block_on(async {
        let mut conn = PgConnection::connect(&database_url()).await?;
        let mut results = Vec::new();
        for sql in queries {
            results.push(sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut conn).await?);
        }
        conn.close().await?;
        Ok(results)
    })
    .map_err(|e: sqlx::Error| e.to_string())
}

/// What the bank's event store says, read from its `events` table: per account, the
/// money of each event (decoded here from the stored JSON, independently of the
/// statements service), and the number of events of every stream.
fn expected(schema: &str) -> Result<(BTreeMap<String, Account>, u64), String> {
    let rows = select(vec![format!(
        "SELECT aggregate_type, aggregate_id, version, event_id, payload, \
         to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM') \
         FROM \"{schema}\".events ORDER BY aggregate_type, aggregate_id, version"
    )])?
    .remove(0);
    let mut accounts = BTreeMap::<String, Account>::new();
    for row in &rows {
        let kind: String = row.get(0);
        if kind != "account" {
            continue;
        }
        let id: String = row.get(1);
        let version = u64::try_from(row.get::<i64, _>(2)).expect("a positive version");
        let payload: Value = serde_json::from_slice(row.get(4)).expect("a JSON payload");
        let account = accounts.entry(id.clone()).or_default();
        assert_eq!(
            version,
            account.version + 1,
            "the bank's stream {id} has a gap"
        );
        account.version = version;
        account.event_id = Some(row.get(3));
        let (name, fields) = match &payload {
            Value::Object(map) if map.len() == 1 => map.iter().next().expect("one entry"),
            _ => continue, // "Closed"
        };
        let amount = || fields["amount"].as_i64().expect("an amount in cents");
        let (money_in, money_out) = match name.as_str() {
            "Deposited" | "TransferCredited" | "TransferRefunded" => (amount(), 0),
            "Withdrawn" | "TransferDebited" => (0, amount()),
            _ => (0, 0),
        };
        if (money_in, money_out) != (0, 0) {
            account.balance_cents += money_in - money_out;
            let totals = account.months.entry(row.get(5)).or_default();
            totals.0 += money_in;
            totals.1 += money_out;
        }
    }
    Ok((accounts, u64::try_from(rows.len()).expect("fits")))
}

/// The statements read model (its tables), and the inbox's last version applied per
/// account with whether the account is parked.
type Found = (BTreeMap<String, Account>, BTreeMap<String, (u64, bool)>);

fn found(schema: &str) -> Result<Found, String> {
    let s = format!("\"{schema}\"");
    let mut results = select(vec![
        format!(
            "SELECT account, balance_cents, last_version, last_event_id FROM {s}.statement_accounts"
        ),
        format!("SELECT account, month, in_cents, out_cents FROM {s}.statement_months"),
        format!(
            "SELECT stream_id, version, parked FROM {s}.consumer_streams \
             WHERE stream_type = 'account'"
        ),
    ])?;
    let (inbox, months, accounts) = (
        results.pop().expect("3"),
        results.pop().expect("2"),
        results.pop().expect("1"),
    );
    let mut statements = BTreeMap::<String, Account>::new();
    for row in &accounts {
        let version = u64::try_from(row.get::<i64, _>(2)).expect("a positive version");
        let account = Account {
            balance_cents: row.get(1),
            months: BTreeMap::new(),
            version,
            event_id: Some(row.get(3)),
        };
        statements.insert(row.get(0), account);
    }
    for row in &months {
        let account = statements.entry(row.get(0)).or_default();
        let totals: (i64, i64) = (row.get(2), row.get(3));
        if totals != (0, 0) {
            account.months.insert(row.get(1), totals);
        }
    }
    let inbox = inbox
        .iter()
        .map(|row| {
            let version = u64::try_from(row.get::<i64, _>(1)).expect("a positive version");
            (row.get(0), (version, row.get(2)))
        })
        .collect();
    Ok((statements, inbox))
}

/// How many messages the broker's stream holds.
fn stream_messages(name: &str) -> u64 {
    block_on(async {
        let client = async_nats::connect(nats_url()).await.expect("connect");
        let jetstream = async_nats::jetstream::new(client);
        let mut stream = jetstream.get_stream(name).await.expect("the test's stream");
        stream
            .info()
            .await
            .expect("the stream's info")
            .state
            .messages
    })
}

/// The broker of one run of the crash test.
enum Broker {
    /// A stream of the test's own on the shared NATS server.
    Nats(TestStream),
    /// A private Kafka broker, restarted in some rounds.
    Kafka(PrivateKafka),
}

impl Broker {
    /// `--to` / `--from`, `--stream` and `--prefix`.
    fn args(&self) -> [String; 5] {
        let (url, stream, prefix) = match self {
            Broker::Nats(stream) => (nats_url(), &stream.name, &stream.prefix),
            Broker::Kafka(kafka) => (kafka.url(), &kafka.topic, &kafka.prefix),
        };
        let flag = |f: &str| f.to_owned();
        [
            url,
            flag("--stream"),
            stream.clone(),
            flag("--prefix"),
            prefix.clone(),
        ]
    }

    /// Whether to restart the broker in this round (never the shared NATS server).
    fn restarts(&self, rng: &mut Rng) -> bool {
        matches!(self, Broker::Kafka(_)) && rng.range(0, 4) == 0
    }

    /// Kills the broker and starts it again on the same data.
    fn restart(&mut self) {
        if let Broker::Kafka(kafka) = self {
            kafka.restart();
        }
    }

    /// Checks what the broker holds against the bank's `events`: JetStream keeps each
    /// event once (it deduplicates the relay's republished messages by id); Kafka
    /// keeps each at least once (republished messages are stored again, and the
    /// consumer's inbox drops them). Says how many messages it holds.
    fn check_held(&self, events: u64, seed: u64) -> u64 {
        match self {
            Broker::Nats(stream) => {
                let held = stream_messages(&stream.name);
                assert_eq!(
                    held, events,
                    "seed {seed}: the broker's stream and the bank's events"
                );
                held
            }
            Broker::Kafka(kafka) => {
                let (distinct, held) = kafka.held(events);
                assert_eq!(
                    distinct, events,
                    "seed {seed}: the topic holds every event of the bank"
                );
                held
            }
        }
    }
}

/// Starts `bank relay` (incarnation `n`, logging to its own file).
fn start_relay(store: &str, broker: &Broker, logs: &Path, n: u32) -> Killed {
    Killed::start(
        Command::new(bank_bin())
            .args(["--store", store, "relay", "--to"])
            .args(broker.args()),
        &logs.join(format!("relay-{n}.log")),
    )
}

/// Starts `statements consume` (incarnation `n`, logging to its own file).
fn start_consumer(store: &str, broker: &Broker, logs: &Path, n: u32) -> Killed {
    Killed::start(
        Command::new(statements_bin())
            .args(["--store", store, "consume", "--from"])
            .args(broker.args())
            // On Kafka, one static member of the group: each restarted consumer takes
            // its predecessor's place (tansu does not evict a dead dynamic member).
            .env("STATEMENTS_INSTANCE", "crash-consumer"),
        &logs.join(format!("consume-{n}.log")),
    )
}

/// Kills `process` with SIGKILL (after checking it had not stopped by itself).
#[track_caller]
fn kill(process: &mut Option<Killed>, what: &str) {
    let mut process = process.take().expect("running");
    if let Some(status) = process.child.try_wait().expect("wait") {
        panic!("the {what} exited by itself ({status}): {}", process.log());
    }
    // `Child::kill` is SIGKILL on Unix; the guard's drop does it and reaps the process.
    drop(process);
}

#[test]
fn statements_survive_the_relay_and_the_consumer_killed_at_random() {
    let Some(stream) = TestStream::new() else {
        return;
    };
    crash_test(Broker::Nats(stream), "nats");
}

#[test]
fn statements_survive_kills_and_broker_restarts_on_kafka() {
    let Some(kafka) = PrivateKafka::start() else {
        return;
    };
    crash_test(Broker::Kafka(kafka), "kafka");
}

fn crash_test(mut broker: Broker, label: &str) {
    let (Some(bank_schema), Some(schema)) = (Schema::fresh("bank"), Schema::fresh("st")) else {
        return;
    };
    bank_bin(); // built before the clock starts
    let started = Instant::now();
    let seed = Rng::seed();
    eprintln!("crash test ({label}): seed {seed} (CRASH_SEED={seed} replays the random choices)");
    let mut rng = Rng::new(seed);
    let (bank_store, store) = (bank_schema.url(), schema.url());
    let dir = tempfile::tempdir().expect("a temporary directory for the logs");
    let logs = dir.path();

    // The bank's schema made by one process first: two `bank` processes creating it at
    // once can fail (the bank's read-model tables are created without a lock). Then the
    // accounts, opened with some money while the relay and the consumer start, and the
    // workload, throughout the rounds.
    bank(&bank_store, &["accounts"]);
    let (mut relays, mut consumers) = (1, 1);
    let mut relay = Some(start_relay(&bank_store, &broker, logs, relays));
    let mut consumer = Some(start_consumer(&store, &broker, logs, consumers));
    for i in 0..ACCOUNTS {
        bank(&bank_store, &["open", &account(i)]);
        bank(&bank_store, &["deposit", &account(i), "500"]);
    }
    let appender = Appender::start(&bank_store, APPENDERS, &mut rng, logs);

    let (mut relay_kills, mut consumer_kills, mut broker_restarts) = (0, 0, 0);
    for _ in 0..ROUNDS {
        std::thread::sleep(rng.millis(100, 900));
        let (kill_relay, kill_consumer) = match rng.range(0, 3) {
            0 => (true, false),
            1 => (false, true),
            _ => (true, true),
        };
        // The broker, killed with SIGKILL and restarted under whichever of the two
        // processes is not killed this round.
        if broker.restarts(&mut rng) {
            broker.restart();
            broker_restarts += 1;
        }
        if kill_relay {
            kill(&mut relay, "relay");
            relay_kills += 1;
        }
        if kill_consumer {
            kill(&mut consumer, "consumer");
            consumer_kills += 1;
        }
        std::thread::sleep(rng.millis(10, 300));
        if kill_relay {
            relays += 1;
            relay = Some(start_relay(&bank_store, &broker, logs, relays));
        }
        if kill_consumer {
            consumers += 1;
            consumer = Some(start_consumer(&store, &broker, logs, consumers));
        }
    }
    let tally = appender.finish();
    assert!(
        tally.failed == 0,
        "{} bank commands failed; the last: {}",
        tally.failed,
        tally.last_failure
    );

    // Catch up: every account's statement at the version of its stream in the bank.
    let caught_up = Instant::now();
    let probe = || {
        let (bank_accounts, events) = expected(&bank_schema.0)?;
        let (statements, inbox) = found(&schema.0)?;
        let behind: Vec<_> = (bank_accounts.iter())
            .filter(|(id, a)| statements.get(*id).map(|s| s.version) != Some(a.version))
            .map(|(id, a)| {
                let at = statements.get(id).map(|s| s.version);
                let (applied, parked) = inbox.get(id).copied().unwrap_or_default();
                let parked = if parked { ", parked" } else { "" };
                format!("{id} at {at:?} of {} (inbox: {applied}{parked})", a.version)
            })
            .collect();
        if behind.is_empty() {
            Ok((bank_accounts, events))
        } else {
            Err(format!("behind: {}", behind.join(", ")))
        }
    };
    let deadline = caught_up + CATCH_UP;
    let (bank_accounts, events) = loop {
        match probe() {
            Ok(done) => break done,
            Err(last) if Instant::now() > deadline => {
                let (_, letters, _) = statements(&store, &["dead-letters", "list", "--json"]);
                let letters: Vec<String> = (letters["dead_letters"].as_array().into_iter())
                    .flatten()
                    .map(|l| format!("{} v{}: {}", l["subject"], l["version"], l["reason"]))
                    .collect();
                panic!(
                    "seed {seed}: the statements did not catch up within {CATCH_UP:?} \
                     ({relay_kills} relay kills, {consumer_kills} consumer kills, \
                     {broker_restarts} broker restarts); {last}; \
                     dead letters: {letters:#?}\nthe last consumer's log: {}",
                    consumer.as_ref().map(Killed::log).unwrap_or_default()
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let catch_up = caught_up.elapsed();
    relay.as_mut().expect("running").assert_running();
    consumer.as_mut().expect("running").assert_running();

    // Compare, account by account.
    let (statements_accounts, inbox) = found(&schema.0).expect("the statements' tables");
    let mut wrong = Vec::new();
    for (id, expected) in &bank_accounts {
        match statements_accounts.get(id) {
            Some(statement) if statement == expected => {}
            other => wrong.push(format!("{id}: expected {expected:?}, found {other:?}")),
        }
        if inbox.get(id) != Some(&(expected.version, false)) {
            let applied = inbox.get(id);
            wrong.push(format!(
                "{id}: the inbox has (version, parked) {applied:?}, the bank version {}",
                expected.version
            ));
        }
    }
    for id in statements_accounts.keys() {
        if !bank_accounts.contains_key(id) {
            wrong.push(format!("{id}: in the statements, not in the bank"));
        }
    }
    assert!(
        wrong.is_empty(),
        "seed {seed}: the statements differ from the bank's event store:\n{}",
        wrong.join("\n")
    );
    let (code, stats, stderr) = statements(&store, &["stats", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (&stats["dead_letters"], &stats["parked"]),
        (&0.into(), &0.into()),
        "seed {seed}: {stats}"
    );
    // The relay's restarts republished what was in flight.
    let held = broker.check_held(events, seed);

    let account_events: u64 = bank_accounts.values().map(|a| a.version).sum();
    eprintln!(
        "crash test ({label}): seed {seed}, rounds {ROUNDS}, relay kills {relay_kills}, consumer kills \
         {consumer_kills}, broker restarts {broker_restarts}, events {events} ({account_events} of {} accounts), \
         messages on the broker {held}, bank commands {} \
         ({} rejected, {} interrupted at the end), lost 0, applied twice 0, catch-up {:.1} s, duration {:.1} s",
        bank_accounts.len(),
        tally.commands,
        tally.rejected,
        tally.interrupted,
        catch_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
