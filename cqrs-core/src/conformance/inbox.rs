//! The inbox conformance suite: what a [`Consumer`] promises over every [`Inbox`],
//! written once and run by every database crate with
//! [`inbox_conformance_tests!`](crate::inbox_conformance_tests).
//!
//! Each case is a `pub async fn case<I: Inbox>(inbox: I)`; the inbox is fresh and
//! belongs to the consumer named [`CONSUMER`]. The cases drive a real [`Consumer`] from
//! an [`InMemoryPublisher`] acting as the broker, with a projection that records what it
//! is given (outside the inbox's transaction; the backends test read-model atomicity
//! themselves).
//!
//! | promise | case |
//! |---|---|
//! | each event applied once; redeliveries acknowledged without effect | [`applies_each_event_once`] |
//! | an event ahead of a missing one waits for it, then both apply in order | [`gap_waits_for_the_missing_event`] |
//! | a gap that is not filled in time is dead-lettered, the stream parked, redrive fills it | [`gap_dead_lettered_then_redriven`] |
//! | a poison event is dead-lettered after its attempts; its stream parks, others go on; redrive applies | [`poison_event_parks_its_stream`] |
//! | foreign and undecodable messages are dead-lettered with a reason, never crash | [`foreign_and_undecodable_messages`] |
//! | dead letters and stream states survive a new consumer on the same inbox | [`state_survives_a_new_consumer`] |

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{
    BoxError, Consumer, ConsumerConfig, ConsumerControl, DeadLetter, DomainEvent, Envelope,
    InMemoryPublisher, Inbox, InboxStats, Metadata, OutboundMessage, Position, Projection,
    Publisher, ReceivedMessage, RecordedEvent, RetryPolicy, StreamId, SubjectScheme,
};

/// The name of the consumer (and projection) the cases run: the inbox the factory makes
/// must belong to it.
pub const CONSUMER: &str = "conformance-consumer";

/// The events of the cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Tick {
    /// A tick numbered `n`.
    Tick {
        /// Its number.
        n: u64,
    },
}

impl DomainEvent for Tick {
    const EVENT_TYPES: &'static [&'static str] = &["Tick"];

    fn event_type(&self) -> &'static str {
        "Tick"
    }
}

/// What the recording projection saw, shared with the case.
#[derive(Debug, Clone, Default)]
struct Seen {
    applied: Arc<Mutex<BTreeMap<StreamId, Vec<u64>>>>,
    failing: Arc<Mutex<HashSet<(StreamId, u64)>>>,
}

impl Seen {
    /// Every version applied to `stream`, in order, as many times as applied.
    fn exact(&self, stream: &StreamId) -> Vec<u64> {
        let applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        applied.get(stream).cloned().unwrap_or_default()
    }

    /// The versions applied to `stream`, once each, in the order first applied. (A batch
    /// rolled back after the projection failed on one of its events is applied again;
    /// this projection records outside the transaction, so it sees the first try too.)
    fn versions(&self, stream: &StreamId) -> Vec<u64> {
        let mut versions = self.exact(stream);
        let mut seen = HashSet::new();
        versions.retain(|v| seen.insert(*v));
        versions
    }

    fn fail_on(&self, stream: &StreamId, version: u64, fail: bool) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match fail {
            true => failing.insert((stream.clone(), version)),
            false => failing.remove(&(stream.clone(), version)),
        };
    }
}

#[derive(Debug)]
struct Recorder(Seen);

#[derive(Debug, thiserror::Error)]
#[error("the recorder refuses {0} version {1} (poison, on purpose)")]
struct Poison(StreamId, u64);

impl<Cx: Send + 'static> Projection<Cx> for Recorder {
    type Event = Tick;

    fn name(&self) -> &str {
        CONSUMER
    }

    async fn apply(&mut self, _: &mut Cx, batch: &[Envelope<Tick>]) -> Result<(), BoxError> {
        for e in batch {
            let key = (e.stream.clone(), e.version);
            let failing = self
                .0
                .failing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if failing.contains(&key) {
                return Err(Poison(key.0, key.1).into());
            }
            drop(failing);
            let mut applied = self
                .0
                .applied
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            applied.entry(key.0).or_default().push(key.1);
        }
        Ok(())
    }
}

fn stream(label: &str) -> StreamId {
    StreamId::new("ticker", format!("{label}-{}", Uuid::new_v4()))
        .expect("a conformance stream id is valid")
}

fn message(stream: &StreamId, version: u64, payload: &[u8]) -> OutboundMessage {
    let record = RecordedEvent {
        event_id: Uuid::now_v7(),
        stream: stream.clone(),
        version,
        position: Position::new(0, version),
        event_type: "Tick".into(),
        schema_version: 1,
        recorded_at: SystemTime::now(),
        payload: payload.to_vec(),
        metadata: Metadata::new(),
    };
    let scheme = SubjectScheme::new("conformance").expect("a valid prefix");
    OutboundMessage::from_record(&record, &scheme)
}

fn tick(stream: &StreamId, version: u64) -> OutboundMessage {
    tick_message(stream, version, version)
}

/// The message of a [`Tick`] numbered `n` at `version` of `stream`, as a relay would
/// publish it (subject prefix `conformance`): for backends' own consumer tests.
pub fn tick_message(stream: &StreamId, version: u64, n: u64) -> OutboundMessage {
    message(
        stream,
        version,
        format!("{{\"Tick\":{{\"n\":{n}}}}}").as_bytes(),
    )
}

fn as_received(message: &OutboundMessage) -> ReceivedMessage {
    ReceivedMessage {
        subject: message.subject.clone(),
        headers: message
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
        payload: message.payload.clone(),
    }
}

/// A consumer running in a task on a subscription to `broker`, with fast retries.
struct Running<I: Inbox> {
    control: ConsumerControl,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Consumer<I, Recorder>>,
}

fn fast(config: ConsumerConfig) -> ConsumerConfig {
    let mut config = config.with_attempts(2);
    config.backoff = RetryPolicy {
        max_attempts: u32::MAX,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
    };
    config
}

fn start<I: Inbox>(
    inbox: I,
    broker: &InMemoryPublisher,
    seen: &Seen,
    config: ConsumerConfig,
) -> Running<I> {
    let consumer = Consumer::new(inbox, Recorder(seen.clone())).with_config(fast(config));
    resume(consumer, broker)
}

fn resume<I: Inbox>(mut consumer: Consumer<I, Recorder>, broker: &InMemoryPublisher) -> Running<I> {
    let mut subscription = broker.subscribe();
    let control = consumer.control();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = consumer.run_until(&mut subscription, shutdown).await {
            panic!("the consumer stopped: {error}");
        }
        consumer
    });
    Running {
        control,
        stop: Some(stop),
        task,
    }
}

impl<I: Inbox> Running<I> {
    async fn finish(mut self) -> Consumer<I, Recorder> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(30), &mut self.task).await {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(error)) => panic!("the consumer task failed: {error}"),
            Err(_) => panic!("the consumer did not stop within 30 s"),
        }
    }

    async fn stats(&self) -> InboxStats {
        self.control.stats().await.expect("the inbox answers stats")
    }

    async fn letters(&self) -> Vec<DeadLetter> {
        self.control
            .dead_letters(0, 1000)
            .await
            .expect("the inbox lists dead letters")
    }
}

/// Waits (at most 30 s) until `check` holds, panicking with `what` otherwise.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 30 s waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn publish(broker: &InMemoryPublisher, messages: &[OutboundMessage]) {
    for result in broker.publish(messages).await {
        result.expect("the in-memory broker takes every message");
    }
}

/// Each event is applied once, in each stream's order; a broker that delivers
/// everything again gets every redelivery acknowledged without effect.
pub async fn applies_each_event_once<I: Inbox>(inbox: I) {
    let (broker, seen) = (InMemoryPublisher::new(), Seen::default());
    let running = start(inbox, &broker, &seen, ConsumerConfig::default());
    let streams: Vec<_> = (0..3).map(|i| stream(&format!("once{i}"))).collect();
    for version in 1..=5 {
        let batch: Vec<_> = streams.iter().map(|s| tick(s, version)).collect();
        publish(&broker, &batch).await;
    }
    broker.redeliver_all();
    // Delivered after every redelivery: once it is applied, they were all handled.
    let fence = stream("fence");
    publish(&broker, &[tick(&fence, 1)]).await;
    eventually("the fence after the redeliveries is applied", || async {
        seen.exact(&fence) == [1]
    })
    .await;
    let consumer = running.finish().await;
    let stats = consumer.stats();
    for s in &streams {
        assert_eq!(
            seen.exact(s),
            [1, 2, 3, 4, 5],
            "{s}: each event once, in order"
        );
    }
    assert_eq!(stats.applied, 16, "15 events and the fence applied");
    assert_eq!(stats.duplicates, 15, "the 15 redeliveries were recognised");
    assert_eq!(stats.dead_lettered, 0, "nothing dead-lettered");
}

/// An event delivered ahead of a missing one is held, unacknowledged, and applied after
/// the missing one arrives.
pub async fn gap_waits_for_the_missing_event<I: Inbox>(inbox: I) {
    let (broker, seen) = (InMemoryPublisher::new(), Seen::default());
    let running = start(inbox, &broker, &seen, ConsumerConfig::default());
    let s = stream("gap");
    let (v1, v2, v3) = (tick(&s, 1), tick(&s, 2), tick(&s, 3));
    publish(&broker, &[v1, v3]).await;
    eventually("version 1 is applied", || async {
        seen.versions(&s) == [1]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.versions(&s), [1], "version 3 waits for version 2");
    publish(&broker, &[v2]).await;
    eventually("versions 2 and 3 follow", || async {
        seen.versions(&s) == [1, 2, 3]
    })
    .await;
    let stats = running.stats().await;
    let consumer = running.finish().await;
    assert_eq!(
        stats.dead_letters, 0,
        "no dead letter for a gap that was filled"
    );
    assert_eq!(consumer.stats().held, 1, "version 3 was held once");
}

/// A gap not filled within the wait is dead-lettered and its stream parked: later
/// events (and the late missing one) follow into the dead letters, and a redrive
/// applies them all in order and unparks the stream.
pub async fn gap_dead_lettered_then_redriven<I: Inbox>(inbox: I) {
    let (broker, seen) = (InMemoryPublisher::new(), Seen::default());
    let config = ConsumerConfig::default().with_gap_wait(Duration::from_millis(100));
    let running = start(inbox, &broker, &seen, config);
    let s = stream("parked");
    let v: Vec<_> = (1..=4).map(|k| tick(&s, k)).collect();
    publish(&broker, &[v[0].clone(), v[2].clone()]).await;
    eventually("the gap is dead-lettered", || async {
        running.letters().await.len() == 1
    })
    .await;
    let letter = &running.letters().await[0];
    assert!(
        letter.reason.contains("version gap"),
        "the reason names the gap: {}",
        letter.reason
    );
    assert_eq!(
        (letter.stream.as_ref(), letter.version),
        (Some(&s), Some(3))
    );
    publish(&broker, &[v[3].clone(), v[1].clone()]).await;
    eventually("the parked stream's events follow", || async {
        running.letters().await.len() == 3
    })
    .await;
    assert_eq!(seen.versions(&s), [1], "nothing applied past the gap");
    assert_eq!(running.stats().await.parked, 1, "the stream is parked");
    let report = running.control.redrive(None).await.expect("redrive runs");
    assert_eq!(report.applied, 3, "versions 2 to 4 redriven: {report:?}");
    assert_eq!(
        report.unparked,
        std::slice::from_ref(&s),
        "the stream is unparked"
    );
    assert_eq!(seen.versions(&s), [1, 2, 3, 4], "applied in order");
    let stats = running.stats().await;
    assert_eq!((stats.parked, stats.dead_letters), (0, 0), "{stats:?}");
    publish(&broker, &[tick(&s, 5)]).await;
    eventually("the stream goes on", || async {
        seen.versions(&s).len() == 5
    })
    .await;
    running.finish().await;
}

/// An event the projection keeps failing on is dead-lettered after its attempts, with
/// the error; its stream parks while other streams go on; a redrive after the fix
/// applies the stream's letters in order.
pub async fn poison_event_parks_its_stream<I: Inbox>(inbox: I) {
    let (broker, seen) = (InMemoryPublisher::new(), Seen::default());
    let running = start(inbox, &broker, &seen, ConsumerConfig::default());
    let (sick, well) = (stream("sick"), stream("well"));
    seen.fail_on(&sick, 2, true);
    for version in 1..=3 {
        publish(&broker, &[tick(&sick, version), tick(&well, version)]).await;
    }
    eventually(
        "the poison event and the one behind it are dead-lettered",
        || async { running.letters().await.len() == 2 && seen.versions(&well).len() == 3 },
    )
    .await;
    let letters = running.letters().await;
    assert!(
        letters[0].reason.contains("the projection failed")
            && letters[0].reason.contains("poison, on purpose"),
        "the reason carries the projection's error: {}",
        letters[0].reason
    );
    assert_eq!(
        letters[0].attempts, 2,
        "tried the configured number of times"
    );
    assert_eq!(letters[0].version, Some(2));
    assert!(
        letters[1].reason.contains("parked"),
        "{}",
        letters[1].reason
    );
    assert_eq!(seen.versions(&sick), [1], "nothing past the poison event");
    assert_eq!(seen.versions(&well), [1, 2, 3], "the other stream went on");
    let failing = running.control.redrive(None).await.expect("redrive runs");
    assert_eq!(
        (failing.applied, failing.remaining),
        (0, 2),
        "still failing: {failing:?}"
    );
    seen.fail_on(&sick, 2, false);
    let report = running
        .control
        .redrive(Some(sick.clone()))
        .await
        .expect("redrive runs");
    assert_eq!((report.applied, report.remaining), (2, 0), "{report:?}");
    assert_eq!(seen.versions(&sick), [1, 2, 3]);
    running.finish().await;
}

/// A message without our envelope, and one of ours whose payload does not decode, go to
/// the dead letters with a clear reason; the consumer goes on; a redrive leaves them.
pub async fn foreign_and_undecodable_messages<I: Inbox>(inbox: I) {
    let (broker, seen) = (InMemoryPublisher::new(), Seen::default());
    let running = start(inbox, &broker, &seen, ConsumerConfig::default());
    broker.inject(ReceivedMessage {
        subject: "conformance.elsewhere".into(),
        headers: vec![("Content-Type".into(), "text/plain".into())],
        payload: b"hello".to_vec(),
    });
    let (bad, good) = (stream("bad"), stream("good"));
    broker.inject(as_received(&message(&bad, 1, b"{not json")));
    publish(&broker, &[tick(&good, 1)]).await;
    eventually(
        "both are dead-lettered and the good one applied",
        || async { running.letters().await.len() == 2 && seen.versions(&good) == [1] },
    )
    .await;
    let letters = running.letters().await;
    assert!(
        letters[0].reason.contains("not a cqrs event message") && letters[0].stream.is_none(),
        "a foreign message: {}",
        letters[0].reason
    );
    assert!(
        letters[1].reason.contains("cannot decode") && letters[1].stream.as_ref() == Some(&bad),
        "an undecodable payload: {}",
        letters[1].reason
    );
    assert_eq!(
        letters[1].message.payload, b"{not json",
        "the message is kept as received"
    );
    let report = running.control.redrive(None).await.expect("redrive runs");
    assert_eq!((report.applied, report.remaining), (0, 2), "{report:?}");
    running.finish().await;
}

/// What one consumer recorded (stream versions, dead letters, a parked stream) is what
/// the next consumer on the same inbox finds.
pub async fn state_survives_a_new_consumer<I: Inbox>(inbox: I) {
    let (broker, seen) = (InMemoryPublisher::new(), Seen::default());
    let running = start(inbox, &broker, &seen, ConsumerConfig::default());
    let (s, sick) = (stream("kept"), stream("kept-sick"));
    seen.fail_on(&sick, 1, true);
    publish(&broker, &[tick(&s, 1), tick(&s, 2), tick(&sick, 1)]).await;
    eventually("two applied, one dead-lettered", || async {
        seen.versions(&s).len() == 2 && running.letters().await.len() == 1
    })
    .await;
    let consumer = running.finish().await;
    // A new run on the same inbox: a redelivery of everything is all duplicates, and the
    // parked stream stays parked.
    let running = resume(consumer, &broker);
    broker.redeliver_all();
    publish(&broker, &[tick(&s, 3)]).await;
    eventually("version 3 applied", || async {
        seen.versions(&s).len() == 3
    })
    .await;
    let stats = running.stats().await;
    let counts = running
        .control
        .counts()
        .await
        .expect("the consumer answers");
    assert_eq!(counts.applied, 3, "versions 1 and 2, then 3: {counts:?}");
    assert!(
        counts.duplicates >= 2,
        "the redeliveries recognised: {counts:?}"
    );
    assert_eq!(seen.versions(&s), [1, 2, 3], "nothing applied twice");
    assert_eq!(stats.parked, 1, "still parked: {stats:?}");
    assert!(
        stats.dead_letters >= 1,
        "the dead letter is still there: {stats:?}"
    );
    running.finish().await;
}

/// The inbox of one case, or `None` after saying `skipped`.
#[doc(hidden)]
pub fn available<I>(path: &'static str, inbox: Option<I>) -> Option<I> {
    if inbox.is_none() {
        super::say(&format!(
            "skipped: {path}: the database is not available here (its factory said why)"
        ));
    }
    inbox
}

/// Runs the [inbox conformance suite](crate::conformance::inbox) against a database
/// crate: one `#[tokio::test]` per case, named after the case.
///
/// The argument is the path of an `async fn() -> Option<I>` (with `I: Inbox`) that
/// makes a fresh, empty inbox for the consumer named
/// [`CONSUMER`](crate::conformance::inbox::CONSUMER); `None` means "skip".
///
/// ```no_run
/// async fn fresh_inbox() -> Option<cqrs_core::InMemoryInbox> {
///     Some(cqrs_core::InMemoryInbox::new())
/// }
///
/// cqrs_core::inbox_conformance_tests!(fresh_inbox);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! inbox_conformance_tests {
    ($fresh_inbox:path $(,)?) => {
        $crate::inbox_conformance_tests!(@cases $fresh_inbox:
            applies_each_event_once,
            gap_waits_for_the_missing_event,
            gap_dead_lettered_then_redriven,
            poison_event_parks_its_stream,
            foreign_and_undecodable_messages,
            state_survives_a_new_consumer,
        );
    };
    (@cases $fresh_inbox:path: $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(inbox) = $crate::conformance::inbox::available(
                    concat!(module_path!(), "::", stringify!($case)),
                    $fresh_inbox().await,
                ) {
                    $crate::conformance::inbox::$case(inbox).await;
                }
            }
        )+
    };
}
