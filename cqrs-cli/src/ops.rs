//! The registry of aggregates and projections, and the operations themselves.

use std::fmt;
use std::io::Write;

use cqrs_core::{
    Aggregate, CheckpointStrategy, Codec, EventStore, Position, Problem, Progress, Projection,
    ProjectionError, ProjectionRunner, Repository, StreamId,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};

mod data;
mod dead_letters;
mod lifecycle;
mod progress;
mod verify;

pub use data::{ProjectionStats, Replayed, Stats, StreamFilter};
pub use dead_letters::ConsumerOps;
use progress::Bar;
pub use progress::ProgressStyle;

use crate::output::{payload_json, rfc3339};
use crate::{Error, EventsArgs, OpsCommand, ReplayArgs, Result, SnapshotArgs};

/// Something that can snapshot streams of one aggregate type.
trait SnapshotTaker: Send + Sync {
    fn aggregate_type(&self) -> &'static str;
    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, cqrs_core::Result<Option<u64>>>;
}

impl<A, S, C> SnapshotTaker for Repository<A, S, C>
where
    A: Aggregate,
    S: EventStore + Clone + 'static,
    C: Codec,
{
    fn aggregate_type(&self) -> &'static str {
        A::TYPE
    }

    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, cqrs_core::Result<Option<u64>>> {
        Box::pin(self.snapshot_now(id))
    }
}

/// Something that can rebuild one projection and report its checkpoint.
trait Replayer: Send + Sync {
    fn name(&self) -> &str;
    fn rebuild<'a>(
        &'a self,
        progress: &'a mut (dyn FnMut(Progress) + Send),
    ) -> BoxFuture<'a, Result<u64, ProjectionError>>;
    fn checkpoint(&self) -> BoxFuture<'_, Result<Position, ProjectionError>>;
    /// Kept up to date inside each append's transaction: no checkpoint, no lag.
    fn inline(&self) -> bool;
}

struct RunnerFactory<F> {
    name: String,
    make: F,
    inline: bool,
}

impl<F, S, P, K, C> Replayer for RunnerFactory<F>
where
    F: Fn() -> ProjectionRunner<S, P, K, C> + Send + Sync,
    S: EventStore + Send + 'static,
    K: CheckpointStrategy,
    P: Projection<K::Context>,
    C: Codec,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn rebuild<'a>(
        &'a self,
        progress: &'a mut (dyn FnMut(Progress) + Send),
    ) -> BoxFuture<'a, Result<u64, ProjectionError>> {
        Box::pin(async move { (self.make)().rebuild(progress).await })
    }

    fn checkpoint(&self) -> BoxFuture<'_, Result<Position, ProjectionError>> {
        Box::pin(async move { (self.make)().checkpoint().await })
    }

    fn inline(&self) -> bool {
        self.inline
    }
}

/// The operations an application exposes: it registers its store, the aggregates whose
/// streams may be snapshotted and the projections that may be replayed, then runs the
/// parsed [`OpsCommand`].
///
/// # Examples
/// ```
/// # use cqrs_core::{Aggregate, BoxError, DomainEvent, Envelope, Projection};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Default, Serialize, Deserialize)]
/// # struct Counter { value: u64 }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # impl DomainEvent for CounterEvent {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
/// #     fn event_type(&self) -> &'static str { "Incremented" }
/// # }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("never")]
/// # struct Never;
/// # impl Aggregate for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = u64;
/// #     type Event = CounterEvent;
/// #     type Error = Never;
/// #     type Services = ();
/// #     fn handle(&self, by: &u64, _: &()) -> Result<Vec<CounterEvent>, Never> {
/// #         Ok(vec![CounterEvent::Incremented { by: *by }])
/// #     }
/// #     fn apply(&mut self, event: CounterEvent) {
/// #         match event { CounterEvent::Incremented { by } => self.value += by }
/// #     }
/// # }
/// # #[derive(Debug, Default)]
/// # struct Total(u64);
/// # impl Projection for Total {
/// #     type Event = CounterEvent;
/// #     fn name(&self) -> &str { "total" }
/// #     async fn apply(&mut self, _: &mut (), batch: &[Envelope<CounterEvent>]) -> Result<(), BoxError> {
/// #         for e in batch { let CounterEvent::Incremented { by } = e.event; self.0 += by; }
/// #         Ok(())
/// #     }
/// # }
/// use clap::Parser;
/// use cqrs_cli::{Operations, OpsCommand};
/// use cqrs_core::{InMemoryEventStore, ProjectionRunner, Repository, StoreCheckpoint};
///
/// #[derive(Parser)]
/// struct Cli {
///     #[arg(long)]
///     json: bool,
///     #[command(subcommand)]
///     command: OpsCommand,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryEventStore::new();
/// let counters = Repository::<Counter, _>::new(store.clone(), ());
/// counters.execute("c1", &3).await?;
///
/// let ops = Operations::new(store.clone())
///     .aggregate(counters.clone())
///     .projection({
///         let store = store.clone();
///         move || {
///             let checkpoint = StoreCheckpoint::new(store.clone());
///             ProjectionRunner::with_strategy(store.clone(), Total::default(), checkpoint)
///         }
///     });
/// let cli = Cli::parse_from(["app", "--json", "stats"]);
/// let mut out = Vec::new();
/// ops.run(&cli.command, cli.json, &mut out).await?;
/// let stats: serde_json::Value = serde_json::from_slice(&out)?;
/// assert_eq!(stats["events"], 1);
/// assert_eq!(stats["projections"][0]["lag"], 1);
/// # Ok(())
/// # }
/// ```
pub struct Operations<S> {
    store: S,
    aggregates: Vec<Box<dyn SnapshotTaker>>,
    projections: Vec<Box<dyn Replayer>>,
    checks: Vec<Check>,
    consumers: Vec<(String, Box<dyn ConsumerOps>)>,
    progress: ProgressStyle,
}

/// An extra check that `verify` runs after walking the log ([`Operations::check`]).
type Check = Box<dyn Fn() -> BoxFuture<'static, cqrs_core::Result<Vec<Problem>>> + Send + Sync>;

impl<S> fmt::Debug for Operations<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operations")
            .field(
                "aggregates",
                &self
                    .aggregates
                    .iter()
                    .map(|a| a.aggregate_type())
                    .collect::<Vec<_>>(),
            )
            .field(
                "projections",
                &self
                    .projections
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<S: EventStore + Clone + 'static> Operations<S> {
    /// Operations over `store`, with nothing registered yet.
    pub fn new(store: S) -> Self {
        Operations {
            store,
            aggregates: Vec::new(),
            consumers: Vec::new(),
            projections: Vec::new(),
            checks: Vec::new(),
            progress: ProgressStyle::Auto,
        }
    }

    /// Registers an extra check that `verify` runs after walking the log, for what the
    /// log walk cannot see: a backend's read-model rows (for instance
    /// `cqrs_sled::SledEventStore::check_records`), an application's own tables.
    /// The problems it returns are reported with the others; an error stops `verify`.
    pub fn check<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = cqrs_core::Result<Vec<Problem>>> + Send + 'static,
    {
        self.checks.push(Box::new(move || Box::pin(check())));
        self
    }

    /// Registers an aggregate type: `snapshot` then covers its streams.
    pub fn aggregate<A: Aggregate, C: Codec>(mut self, repository: Repository<A, S, C>) -> Self {
        self.aggregates.push(Box::new(repository));
        self
    }

    /// Registers a projection by a function that makes a fresh runner for it: `replay`
    /// rebuilds it and `stats` shows its checkpoint and lag. Only a read model that
    /// outlives this process belongs here, with a durable checkpoint
    /// ([`StoreCheckpoint`](cqrs_core::StoreCheckpoint), or a backend's transactional
    /// one): a fresh runner of an in-memory read model has nothing to report, and what
    /// it would rebuild ends with the command.
    pub fn projection<F, S2, P, K, C>(self, make: F) -> Self
    where
        F: Fn() -> ProjectionRunner<S2, P, K, C> + Send + Sync + 'static,
        S2: EventStore + Send + 'static,
        K: CheckpointStrategy,
        P: Projection<K::Context>,
        C: Codec,
    {
        self.register(make, false)
    }

    /// Registers an inline projection (one a backend updates inside each append's
    /// transaction, such as `cqrs_postgres`'s inline projections) by a function that
    /// makes a runner to rebuild it: `replay` rebuilds it as for
    /// [`projection`](Self::projection), and `stats` shows it as inline, with no lag (its
    /// runner's checkpoint only moves during a replay).
    pub fn inline_projection<F, S2, P, K, C>(self, make: F) -> Self
    where
        F: Fn() -> ProjectionRunner<S2, P, K, C> + Send + Sync + 'static,
        S2: EventStore + Send + 'static,
        K: CheckpointStrategy,
        P: Projection<K::Context>,
        C: Codec,
    {
        self.register(make, true)
    }

    fn register<F, S2, P, K, C>(mut self, make: F, inline: bool) -> Self
    where
        F: Fn() -> ProjectionRunner<S2, P, K, C> + Send + Sync + 'static,
        S2: EventStore + Send + 'static,
        K: CheckpointStrategy,
        P: Projection<K::Context>,
        C: Codec,
    {
        let name = make().projection().name().to_owned();
        self.projections
            .push(Box::new(RunnerFactory { name, make, inline }));
        self
    }

    /// Sets how progress is reported on standard error.
    pub fn with_progress(mut self, style: ProgressStyle) -> Self {
        self.progress = style;
        self
    }

    /// The names of the registered projections.
    pub fn projection_names(&self) -> impl Iterator<Item = &str> {
        self.projections.iter().map(|p| p.name())
    }

    /// Runs `command`, writing its result to `out`: readable text, or with `json` one
    /// JSON document. Progress goes to standard error.
    ///
    /// # Errors
    /// [`Error::Usage`] for arguments naming nothing registered or malformed ids and
    /// positions; [`Error::Store`] and [`Error::Projection`] for failures.
    pub async fn run(&self, command: &OpsCommand, json: bool, out: &mut dyn Write) -> Result<()> {
        let report = match command {
            OpsCommand::Snapshot(args) => self.snapshot(args).await?,
            OpsCommand::Replay(args) => self.replay(args).await?,
            OpsCommand::Events(args) => self.events(args).await?,
            OpsCommand::Stats => {
                let mut report = self.stats().await?;
                self.consumer_stats(&mut report).await?;
                report
            }
            OpsCommand::Verify => self.verify().await?,
            OpsCommand::DeadLetters(command) => self.dead_letters(command).await?,
            OpsCommand::Archive(args) => self.archive(args).await?,
            OpsCommand::Restore(args) => self.restore(args).await?,
            OpsCommand::Delete(args) => self.delete(args).await?,
            OpsCommand::Truncate(args) => self.truncate(args).await?,
        };
        if json {
            serde_json::to_writer_pretty(&mut *out, &report.json).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            out.write_all(report.text.as_bytes())?;
        }
        match report.damaged {
            Some(problems) => Err(Error::Damaged { problems }),
            None => Ok(()),
        }
    }

    async fn snapshot(&self, args: &SnapshotArgs) -> Result<Report> {
        let named = match &args.stream {
            Some(stream) => Some(stream.parse::<StreamId>().map_err(cqrs_core::Error::from)?),
            None => None,
        };
        let targets = self.snapshot_targets(named.as_ref()).await?;
        let mut bar = Bar::new(self.progress, "snapshot", targets.len() as u64);
        let mut taken = Vec::new();
        for (i, stream) in targets.iter().enumerate() {
            taken.push((stream.clone(), self.snapshot_stream(stream).await?));
            bar.update(i as u64 + 1, None);
        }
        bar.finish();
        let mut text = String::new();
        for (stream, version) in &taken {
            text.push_str(&format!("snapshot {stream} at version {version}\n"));
        }
        text.push_str(&format!("{} snapshot(s) taken\n", taken.len()));
        let json = json!({
            "snapshots_taken": taken.len(),
            "streams": taken.iter().map(|(s, v)| json!({ "stream": s.to_string(), "version": v })).collect::<Vec<_>>(),
        });
        Ok(Report {
            text,
            json,
            damaged: None,
        })
    }

    async fn replay(&self, args: &ReplayArgs) -> Result<Report> {
        let chosen: Vec<String> = match &args.projection {
            Some(name) => vec![name.clone()],
            None => self.projection_names().map(str::to_owned).collect(),
        };
        let mut text = String::new();
        let mut results = Vec::new();
        for name in &chosen {
            // An unknown name fails before anything is counted.
            if !self.projection_names().any(|n| n == name) {
                self.replay_projection(name, &mut |_| {}).await?;
            }
            let total = self.store.count_events(Position::START).await?;
            let mut bar = Bar::new(self.progress, name, total);
            let mut on_progress = |p: Progress| bar.update(p.done, Some(p.total));
            let replayed = self.replay_projection(name, &mut on_progress).await?;
            bar.finish();
            let (events, elapsed) = (replayed.events, replayed.elapsed);
            let rate = replayed.events_per_second();
            text.push_str(&format!(
                "replayed {name}: {events} events in {:.2} s ({rate:.0} events/s)\n",
                elapsed.as_secs_f64()
            ));
            results.push(json!({
                "projection": name,
                "events": events,
                "seconds": elapsed.as_secs_f64(),
                "events_per_second": rate,
            }));
        }
        Ok(Report {
            text,
            json: json!({ "replayed": results }),
            damaged: None,
        })
    }

    async fn events(&self, args: &EventsArgs) -> Result<Report> {
        let records = match &args.stream {
            Some(stream) => {
                let stream = stream.parse::<StreamId>().map_err(cqrs_core::Error::from)?;
                self.stream_page(&stream, 1, args.limit).await?
            }
            None => {
                let after = match &args.after {
                    Some(after) => after.parse::<Position>().map_err(cqrs_core::Error::from)?,
                    None => Position::START,
                };
                self.log_page(after, args.limit).await?
            }
        };
        let mut text = String::new();
        for r in &records {
            text.push_str(&format!(
                "{:>10}  {}  v{}  {} (schema {})  {}  {}\n",
                r.position.to_string(),
                r.stream,
                r.version,
                r.event_type,
                r.schema_version,
                rfc3339(r.recorded_at),
                payload_json(&r.payload)
            ));
        }
        let next = records.last().map(|r| r.position.to_string());
        if records.is_empty() {
            text.push_str("no events\n");
        } else if let (None, Some(next)) = (&args.stream, &next) {
            text.push_str(&format!("-- continue with --after {next}\n"));
        }
        let events: Vec<Value> = records
            .iter()
            .map(|r| {
                json!({
                    "position": r.position.to_string(),
                    "event_id": r.event_id.to_string(),
                    "stream": r.stream.to_string(),
                    "version": r.version,
                    "event_type": r.event_type,
                    "schema_version": r.schema_version,
                    "recorded_at": rfc3339(r.recorded_at),
                    "metadata": serde_json::to_value(&r.metadata).unwrap_or(Value::Null),
                    "payload": payload_json(&r.payload),
                })
            })
            .collect();
        Ok(Report {
            text,
            json: json!({ "events": events, "last_position": next }),
            damaged: None,
        })
    }

    async fn stats(&self) -> Result<Report> {
        let stats = self.stats_data().await?;
        let mut text = format!(
            "streams    {}\nevents     {}\nsnapshots  {}\n",
            stats.streams,
            stats.events,
            stats
                .snapshots
                .map_or_else(|| "not reported".to_owned(), |n| n.to_string())
        );
        let mut projections = Vec::new();
        for p in &stats.projections {
            let Some(checkpoint) = p.checkpoint else {
                text.push_str(&format!(
                    "projection {:<24} inline (updated in each append's transaction)\n",
                    p.name
                ));
                projections.push(json!({ "name": p.name, "inline": true, "lag": 0 }));
                continue;
            };
            text.push_str(&format!(
                "projection {:<24} checkpoint {:>10}  lag {}\n",
                p.name,
                checkpoint.to_string(),
                p.lag
            ));
            projections.push(json!({
                "name": p.name,
                "checkpoint": checkpoint.to_string(),
                "lag": p.lag,
            }));
        }
        Ok(Report {
            text,
            json: json!({
                "streams": stats.streams,
                "events": stats.events,
                "snapshots": stats.snapshots,
                "projections": projections,
            }),
            damaged: None,
        })
    }
}

/// What an operation prints: text for people, JSON for scripts.
struct Report {
    text: String,
    json: Value,
    /// `verify` found this many problems: the command fails after its report.
    damaged: Option<u64>,
}

impl Report {
    /// A report of an operation that went well.
    fn ok(text: String, json: Value) -> Self {
        Report {
            text,
            json,
            damaged: None,
        }
    }
}
