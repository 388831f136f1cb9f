//! A tiny aggregate and projection for the cases that go through the typed layers
//! (repository, codec, upcasters, snapshots, projection runner).

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::support::json_bytes;
use crate::{
    Aggregate, BoxError, DomainEvent, Envelope, EventData, Projection, RecordedEvent, StreamId,
};

/// A running sum that can be cleared. `apply` depends on event order (a `Cleared`
/// forgets what came before), so a replay in the wrong order gives another state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Tally {
    pub(super) sum: u64,
    pub(super) adds: u64,
    pub(super) clears: u64,
}

/// The events of a [`Tally`]. `TallyAdded` is at schema version 2: version 1 had
/// `amount` instead of `n`, and before that the type was called `TallyIncremented`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum TallyEvent {
    Added { n: u64 },
    Cleared,
}

pub(super) const ADDED: &str = "TallyAdded";
pub(super) const CLEARED: &str = "TallyCleared";

impl DomainEvent for TallyEvent {
    const EVENT_TYPES: &'static [&'static str] = &[ADDED, CLEARED];

    fn event_type(&self) -> &'static str {
        match self {
            TallyEvent::Added { .. } => ADDED,
            TallyEvent::Cleared => CLEARED,
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            TallyEvent::Added { .. } => 2,
            TallyEvent::Cleared => 1,
        }
    }
}

/// What a [`Tally`] is asked to do.
#[derive(Debug, Clone, Copy)]
pub(super) enum TallyCommand {
    Add(u64),
    Clear,
}

/// The one domain rejection of a [`Tally`].
#[derive(Debug, thiserror::Error)]
#[error("a tally cannot add zero")]
pub(super) struct AddZero;

impl Aggregate for Tally {
    const TYPE: &'static str = "conformance-tally";
    // 2, so that a snapshot at schema version 1 is "old".
    const SNAPSHOT_VERSION: u32 = 2;

    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = AddZero;
    type Services = ();

    fn handle(&self, command: &TallyCommand, _: &()) -> Result<Vec<TallyEvent>, AddZero> {
        match *command {
            TallyCommand::Add(0) => Err(AddZero),
            TallyCommand::Add(n) => Ok(vec![TallyEvent::Added { n }]),
            TallyCommand::Clear => Ok(vec![TallyEvent::Cleared]),
        }
    }

    fn apply(&mut self, event: TallyEvent) {
        match event {
            TallyEvent::Added { n } => {
                self.sum += n;
                self.adds += 1;
            }
            TallyEvent::Cleared => {
                self.sum = 0;
                self.clears += 1;
            }
        }
    }
}

impl Tally {
    /// The state after `events`, applied in order.
    pub(super) fn replay(events: impl IntoIterator<Item = TallyEvent>) -> Tally {
        let mut tally = Tally::default();
        for event in events {
            tally.apply(event);
        }
        tally
    }
}

/// A tally id that no other case, and no earlier run, uses.
pub(super) fn fresh_tally_id(label: &str) -> String {
    format!("{label}-{}", Uuid::new_v4())
}

/// The stream of the tally with this id.
pub(super) fn tally_stream(id: &str) -> StreamId {
    Tally::stream_id(id).expect("a conformance tally id is valid")
}

/// A current (`TallyAdded` v2) record, as the repository would write it.
pub(super) fn added(n: u64) -> EventData {
    EventData::new(ADDED, json_bytes(&json!({ "Added": { "n": n } }))).with_schema_version(2)
}

/// A current `TallyCleared` record.
pub(super) fn cleared() -> EventData {
    EventData::new(CLEARED, json_bytes(&json!("Cleared")))
}

/// A projection that records the tally events of one stream, in the order it sees them.
#[derive(Debug)]
pub(super) struct TallyLog {
    name: String,
    stream: StreamId,
    pub(super) seen: Vec<(u64, TallyEvent)>,
}

impl TallyLog {
    pub(super) fn new(stream: StreamId) -> Self {
        TallyLog {
            name: format!("conformance-tally-log-{}", Uuid::new_v4()),
            stream,
            seen: Vec::new(),
        }
    }
}

impl Projection for TallyLog {
    type Event = TallyEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, record: &RecordedEvent) -> bool {
        record.stream == self.stream && TallyEvent::EVENT_TYPES.contains(&&*record.event_type)
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<TallyEvent>]) -> Result<(), BoxError> {
        self.seen
            .extend(batch.iter().map(|e| (e.version, e.event.clone())));
        Ok(())
    }
}
