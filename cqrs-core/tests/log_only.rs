//! A backend's required surface is the event log: a store that implements only
//! `EventLog` (three methods) runs the conformance suite, and the suite says which
//! optional traits it lacks. With an empty `impl Inspect`, the provided inspection
//! bodies run the inspection cases, and the command layer works on it.

use cqrs_core::{
    AppendResult, EventData, EventLog, ExpectedVersion, InMemoryEventStore, Inspect, Position,
    RecordedEvent, Result, StreamId,
};
use futures::Stream;

/// The in-memory store seen through the log trait only: the three required methods,
/// nothing else (not even `watch`, so live readers poll). `INSPECT` adds the empty
/// `impl Inspect` below.
#[derive(Debug, Clone, Default)]
pub struct LogOnly<const INSPECT: bool = false>(InMemoryEventStore);

impl<const INSPECT: bool> EventLog for LogOnly<INSPECT> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.0.append(stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'a {
        self.0.read_stream(stream, from_version)
    }

    fn read_all(
        &self,
        after: Position,
        limit: Option<u64>,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + '_ {
        self.0.read_all(after, limit)
    }
}

/// The same log, opted in to inspection with the provided bodies.
pub type LogWithInspect = LogOnly<true>;

impl Inspect for LogOnly<true> {}

mod log_only {
    async fn fresh_store() -> Option<super::LogOnly> {
        Some(super::LogOnly::default())
    }

    cqrs_core::store_conformance_tests!(fresh_store);
}

mod log_with_inspect {
    async fn fresh_store() -> Option<super::LogWithInspect> {
        Some(super::LogWithInspect::default())
    }

    cqrs_core::store_conformance_tests!(fresh_store);
}

/// The command layer runs on a log with inspection: no snapshot or checkpoint trait.
#[tokio::test]
async fn repository_runs_on_a_log_with_inspect() {
    use cqrs_core::{Aggregate, DomainEvent, Repository};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, cqrs_core::DomainEvent)]
    enum Counted {
        Added(u64),
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Counter(u64);

    impl Aggregate for Counter {
        const TYPE: &'static str = "counter";
        type Command = u64;
        type Event = Counted;
        type Error = std::convert::Infallible;
        type Services = ();

        fn handle(
            &self,
            by: &u64,
            _: &(),
        ) -> std::result::Result<Vec<Counted>, std::convert::Infallible> {
            Ok(vec![Counted::Added(*by)])
        }

        fn apply(&mut self, Counted::Added(by): Counted) {
            self.0 += by;
        }
    }
    let _ = <Counted as DomainEvent>::EVENT_TYPES;

    let repo = Repository::<Counter, _>::new(LogWithInspect::default(), ());
    repo.execute("c", &3).await.expect("first command");
    repo.execute("c", &4).await.expect("second command");
    let loaded = repo.load("c").await.expect("load");
    assert_eq!((loaded.state.0, loaded.version), (7, 2));
}
