//! Reading by type: [`EventLog::read_all_of_types`], [`Inspect::count_events_of_types`],
//! and a runner that asks only for its projection's types.

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::support::{append_ok, count_events, fresh_stream, json_bytes, read_all};
use crate::{
    BoxError, DomainEvent, Envelope, EventData, EventLog, ExpectedVersion, Inspect, JsonCodec,
    JsonEvent, LogItem, Position, Projection, ProjectionRunner, RecordedEvent, Upcasters,
};

const WANTED: &str = "TypesWanted";
const RARE: &str = "TypesRare";
const OTHER: &str = "TypesOther";
/// A stored type that an upcaster renames to [`WANTED`].
const LEGACY: &str = "TypesLegacy";

/// The events of this case's projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TypesEvent {
    Wanted { label: String },
    Rare { label: String },
}

impl DomainEvent for TypesEvent {
    const EVENT_TYPES: &'static [&'static str] = &[WANTED, RARE];

    fn event_type(&self) -> &'static str {
        match self {
            TypesEvent::Wanted { .. } => WANTED,
            TypesEvent::Rare { .. } => RARE,
        }
    }
}

fn typed(event_type: &str, label: &str) -> EventData {
    let payload = match event_type {
        WANTED => json!({ "Wanted": { "label": label } }),
        RARE => json!({ "Rare": { "label": label } }),
        _ => json!({ "label": label }),
    };
    EventData::new(event_type, json_bytes(&payload))
}

/// Collects the labels it is given, in order.
#[derive(Debug, Default)]
struct Labels(Vec<String>);

impl Projection for Labels {
    type Event = TypesEvent;

    fn name(&self) -> &str {
        "conformance-types"
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<TypesEvent>]) -> Result<(), BoxError> {
        for envelope in batch {
            let (TypesEvent::Wanted { label } | TypesEvent::Rare { label }) = &envelope.event;
            self.0.push(label.clone());
        }
        Ok(())
    }
}

fn upcasters() -> Upcasters {
    Upcasters::new().register(LEGACY, 1, |e: JsonEvent| {
        let label = e.payload["label"].clone();
        Ok(JsonEvent {
            event_type: WANTED.to_owned(),
            schema_version: 1,
            payload: json!({ "Wanted": { "label": label } }),
        })
    })
}

async fn read_of_types<S: EventLog>(
    store: &S,
    after: Position,
    limit: Option<u64>,
    types: &[String],
) -> Vec<LogItem> {
    match store
        .read_all_of_types(after, limit, types)
        .try_collect()
        .await
    {
        Ok(items) => items,
        Err(e) => panic!("read_all_of_types({after}, {limit:?}, {types:?}) must not fail: {e:?}"),
    }
}

fn records(items: &[LogItem]) -> Vec<&RecordedEvent> {
    (items.iter())
        .filter_map(|item| match item {
            LogItem::Event(record) => Some(record),
            LogItem::Passed(_) => None,
        })
        .collect()
}

/// **Reading by type.** `read_all_of_types` hands out exactly the records of the types
/// asked for, as `read_all` has them and in its order, with positions that only grow;
/// every position it hands out (a record's, or a passed one, which is the position of
/// a record of another type) is a cursor from which both reads resume without skipping
/// or repeating a record of those types, and after its last item there is none left
/// (also when the log ends with 1,100 records of other types) and a read from there
/// hands out nothing; `limit` counts the records handed out; `count_events_of_types` agrees. A
/// [`ProjectionRunner`] with an upcaster that renames a stored type gets the records of
/// its projection's types (the renamed one included), in log order, and its checkpoint
/// ends at the end of the log.
pub async fn read_all_of_types_passes_other_types<S: Inspect + Clone + 'static>(store: S) {
    let (a, b) = (fresh_stream("types-a"), fresh_stream("types-b"));
    let batch = vec![
        typed(OTHER, "o1"),
        typed(WANTED, "w1"),
        typed(OTHER, "o2"),
        typed(RARE, "r1"),
    ];
    append_ok(&store, &a, ExpectedVersion::NoStream, batch).await;
    let batch = vec![typed(LEGACY, "l1"), typed(OTHER, "o3"), typed(WANTED, "w2")];
    append_ok(&store, &b, ExpectedVersion::NoStream, batch).await;
    for round in 0..11 {
        let others = (0..100).map(|i| typed(OTHER, &format!("tail-{round}-{i}")));
        append_ok(&store, &a, ExpectedVersion::Any, others.collect()).await;
    }

    let all = read_all(&store, Position::START, None).await;
    let codec = JsonCodec::new().with_upcasters(upcasters());
    let types = crate::Codec::stored_types(&codec, TypesEvent::EVENT_TYPES)
        .expect("a JSON codec names the stored types");
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [LEGACY, RARE, WANTED],
        "the JSON codec asks for the projection's types and the upcasters' sources"
    );
    let of_types = |after: Position| -> Vec<&RecordedEvent> {
        (all.iter())
            .filter(|r| r.position > after && types.contains(&r.event_type))
            .collect()
    };

    let items = read_of_types(&store, Position::START, None, &types).await;
    assert_eq!(
        records(&items),
        of_types(Position::START),
        "[reading by type] the records of the types asked for, as read_all has them"
    );
    let positions: Vec<Position> = items.iter().map(LogItem::position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "[reading by type] positions only grow: {positions:?}"
    );
    let last = *positions.last().expect("items");
    assert!(
        last >= all.last().expect("records").position,
        "[reading by type] the last item ({last}) is at or past the log's last record, \
         although that one is of another type"
    );
    assert!(
        read_all(&store, last, None).await.is_empty(),
        "[reading by type] nothing is left after the last item's position"
    );
    assert!(
        read_of_types(&store, last, None, &types).await.is_empty(),
        "[reading by type] a read after the last item hands out nothing, not even a \
         passed position (an idle reader moves no checkpoint)"
    );
    for item in &items {
        if let LogItem::Passed(passed) = item {
            assert!(
                all.iter().any(|r| r.position == *passed),
                "[reading by type] a passed position ({passed}) is a record's"
            );
        }
    }
    assert_eq!(
        count_events(&store, last).await,
        0,
        "[reading by type] count_events after the last item's position"
    );
    for position in &positions {
        let resumed = read_of_types(&store, *position, None, &types).await;
        assert_eq!(
            records(&resumed),
            of_types(*position),
            "[reading by type] resuming after {position} neither skips nor repeats"
        );
        let plain = read_all(&store, *position, None).await;
        let plain: Vec<&RecordedEvent> = (plain.iter())
            .filter(|r| types.contains(&r.event_type))
            .collect();
        assert_eq!(
            plain,
            of_types(*position),
            "[reading by type] read_all resumes after {position} too"
        );
    }

    let first_two = read_of_types(&store, Position::START, Some(2), &types).await;
    assert_eq!(
        records(&first_two),
        of_types(Position::START)[..2],
        "[reading by type] a limit counts the records handed out"
    );
    assert!(
        records(&read_of_types(&store, Position::START, Some(0), &types).await).is_empty(),
        "[reading by type] a limit of 0 hands out nothing"
    );
    assert!(
        records(&read_of_types(&store, Position::START, None, &[]).await).is_empty(),
        "[reading by type] no types, no records"
    );
    let count = |after: Position, types: Vec<String>| {
        let store = store.clone();
        async move {
            match store.count_events_of_types(after, &types).await {
                Ok(n) => n,
                Err(e) => panic!("count_events_of_types must not fail: {e:?}"),
            }
        }
    };
    let wanted = of_types(Position::START);
    assert_eq!(
        count(Position::START, types.clone()).await,
        wanted.len() as u64,
        "[reading by type] count_events_of_types from the start"
    );
    assert_eq!(
        count(wanted[0].position, types.clone()).await,
        wanted.len() as u64 - 1,
        "[reading by type] count_events_of_types after the first record of those types"
    );
    assert_eq!(
        count(Position::START, vec![OTHER.to_owned()]).await,
        1_103,
        "[reading by type] count_events_of_types of the other type"
    );

    let mut runner = ProjectionRunner::new(store.clone(), Labels::default()).with_codec(codec);
    let mut reports = Vec::new();
    runner
        .rebuild(|progress| reports.push(progress))
        .await
        .expect("the projection rebuilds");
    assert_eq!(
        runner.projection().0,
        ["w1", "r1", "l1", "w2"],
        "[reading by type] the runner applies its types (the upcast one included), in log order"
    );
    let checkpoint = runner.checkpoint().await.expect("a checkpoint");
    assert_eq!(
        count_events(&store, checkpoint).await,
        0,
        "[reading by type] the runner's checkpoint ({checkpoint}) is at the end of the log"
    );
    let done = reports.last().expect("a progress report");
    assert_eq!(
        done.done, done.total,
        "[reading by type] the last progress report is complete: {done:?}"
    );
}
