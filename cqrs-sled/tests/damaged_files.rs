//! Bytes flipped in copies of a real database, at many offsets with a fixed seed: every
//! read either returns exactly what was written or fails with a typed error. Never a
//! panic, never a different value, and nothing lost without an error: sled's recovery
//! stops at the first damaged entry of its log, and the store's mark of its durable end
//! (ADR 0018) makes such a store refuse to open instead of serving a shorter history.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cqrs_core::{
    Error, EventData, EventLog, ExpectedVersion, Position, RecordedEvent, StreamId, verify,
};
use cqrs_sled::{DamagedLog, OpenError, SledConfig, SledEventStore};
use futures::StreamExt;
use uuid::Uuid;

const STREAMS: u64 = 20;
const EVENTS_PER_STREAM: u64 = 15;
const TRIALS: u64 = 200;
const DAMAGES_PER_TRIAL: u64 = 8;

/// A small deterministic generator (xorshift64*), so a failing trial can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn stream(i: u64) -> StreamId {
    StreamId::new("account", format!("a-{i}")).unwrap()
}

/// What was written: each event by id.
type Written = HashMap<Uuid, (StreamId, u64, Vec<u8>)>;

/// Writes the test's events: one append per event, or (`batched`) one append of all of a
/// stream's events, whose log record is then compressed (format 4, the default).
async fn populate(path: &Path, batched: bool) -> Written {
    let store = SledEventStore::open(path).unwrap();
    let mut written = Written::new();
    if batched {
        for i in 0..STREAMS {
            let events: Vec<_> = (1..=EVENTS_PER_STREAM)
                .map(|round| {
                    let payload = format!(
                        r#"{{"amount":{},"note":"{}"}}"#,
                        round * 100 + i,
                        "x".repeat(40)
                    );
                    let event = EventData::new("Deposited", payload.clone().into_bytes());
                    written.insert(event.event_id, (stream(i), round, payload.into_bytes()));
                    event
                })
                .collect();
            store
                .append(&stream(i), ExpectedVersion::NoStream, events)
                .await
                .unwrap();
        }
        store.flush().unwrap();
        return written;
    }
    for round in 1..=EVENTS_PER_STREAM {
        for i in 0..STREAMS {
            let payload = format!(
                r#"{{"amount":{},"note":"{}"}}"#,
                round * 100 + i,
                "x".repeat(40)
            );
            let event = EventData::new("Deposited", payload.clone().into_bytes());
            written.insert(event.event_id, (stream(i), round, payload.into_bytes()));
            store
                .append(&stream(i), ExpectedVersion::Exact(round - 1), vec![event])
                .await
                .unwrap();
        }
    }
    store.flush().unwrap();
    written
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if std::fs::metadata(&path).unwrap().len() > 0 {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Checks a record read back against what was written.
fn check(written: &Written, event: &RecordedEvent, trial: u64) {
    let Some((stream, version, payload)) = written.get(&event.event_id) else {
        panic!("trial {trial}: an event that was never written: {event:?}");
    };
    assert_eq!(
        (&event.stream, event.version, &event.payload),
        (stream, *version, payload),
        "trial {trial}: a damaged record was read as a value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_give_errors_never_wrong_values() {
    flipped_bytes(false).await;
}

/// The same with compressed log records (format 4): damage is found by the checksum
/// before anything is decompressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_compressed_records_give_errors_never_wrong_values() {
    flipped_bytes(true).await;
}

async fn flipped_bytes(batched: bool) {
    let source = tempfile::tempdir().unwrap();
    let written = populate(source.path(), batched).await;
    {
        // The control: an undamaged copy opens with its whole history.
        let copy = tempfile::tempdir().unwrap();
        copy_dir(source.path(), copy.path());
        let store = SledEventStore::open(copy.path()).unwrap();
        assert_eq!(count(&store).await, written.len() as u64);
    }
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let (mut opened, mut complete, mut flagged, mut errors) = (0, 0, 0, 0);
    let (mut lost, mut corrupt, mut other) = (0, 0, 0);
    for trial in 0..TRIALS {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(source.path(), copy.path());
        let candidates = files(copy.path());
        // Mostly the data file, where the records are.
        let file = candidates
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == "db") && rng.below(4) != 0)
            .unwrap_or(&candidates[usize::try_from(rng.below(candidates.len() as u64)).unwrap()])
            .clone();
        let mut bytes = std::fs::read(&file).unwrap();
        for _ in 0..DAMAGES_PER_TRIAL {
            let at = usize::try_from(rng.below(bytes.len() as u64)).unwrap();
            let run = 1 + usize::try_from(rng.below(64)).unwrap();
            for b in bytes.iter_mut().skip(at).take(run) {
                *b ^= u8::try_from(1 + rng.below(255)).unwrap();
            }
        }
        std::fs::write(&file, &bytes).unwrap();

        let store = match SledEventStore::open(copy.path()) {
            Ok(store) => store,
            Err(OpenError::LostEvents { durable, found, .. }) => {
                assert!(found < durable, "trial {trial}: {found} >= {durable}");
                lost += 1;
                continue;
            }
            Err(OpenError::Corrupt { .. }) => {
                corrupt += 1;
                continue;
            }
            Err(_) => {
                other += 1;
                continue;
            }
        };
        opened += 1;
        let mut log = store.read_all(Position::START, None);
        let (mut seen, mut failed) = (0, 0);
        while let Some(item) = log.next().await {
            match item {
                Ok(event) => {
                    seen += 1;
                    check(&written, &event, trial)
                }
                Err(_) => failed += 1,
            }
        }
        drop(log);
        let mut per_stream = 0;
        for i in 0..STREAMS {
            let id = stream(i);
            let mut reads = store.read_stream(&id, 1);
            while let Some(item) = reads.next().await {
                match item {
                    Ok(event) => {
                        per_stream += 1;
                        check(&written, &event, trial)
                    }
                    Err(_) => failed += 1,
                }
            }
        }
        // The store either holds the whole history, or says (with an error) that it
        // does not: never a shorter history that reads as complete.
        if failed == 0 {
            assert_eq!(
                (seen, per_stream),
                (written.len(), written.len()),
                "trial {trial}: the store opened with events silently missing"
            );
            complete += 1;
        } else {
            flagged += 1;
        }
        errors += failed;
        let _ = store
            .append(
                &stream(0),
                ExpectedVersion::Any,
                vec![EventData::new("Deposited", b"{}".to_vec())],
            )
            .await;
    }
    eprintln!(
        "damaged copies (batched: {batched}): {TRIALS} trials: {opened} opened ({complete} with the whole history, \
         {flagged} with typed read errors, {errors} errors in all, 0 with events silently \
         missing); refused to open: {lost} lost events, {corrupt} damaged mark or record, \
         {other} other typed errors"
    );
    assert_eq!(opened + lost + corrupt + other, TRIALS);
    assert_eq!(complete + flagged, opened);
}

async fn count(store: &SledEventStore) -> u64 {
    let mut n = 0;
    let mut log = store.read_all(Position::START, None);
    while let Some(item) = log.next().await {
        item.unwrap();
        n += 1;
    }
    n
}

async fn append_one(store: &SledEventStore, i: u64) -> cqrs_core::Result<u64> {
    let event = EventData::new("Deposited", format!(r#"{{"n":{i}}}"#).into_bytes());
    let done = store
        .append(&stream(i % 3), ExpectedVersion::Any, vec![event])
        .await?;
    Ok(done.position.sequence)
}

/// A log that ends before the mark, as after sled's recovery dropped a damaged end: made
/// by giving a copy of an older state of the store the mark of a later one.
async fn cut_short() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (live, old) = (dir.path().join("live"), dir.path().join("old"));
    {
        let store = SledEventStore::open(&live).unwrap();
        for i in 1..=10 {
            append_one(&store, i).await.unwrap();
        }
    }
    copy_dir(&live, &old);
    {
        let store = SledEventStore::open(&live).unwrap();
        for i in 11..=20 {
            append_one(&store, i).await.unwrap();
        }
    }
    std::fs::copy(live.join("cqrs-sled.mark"), old.join("cqrs-sled.mark")).unwrap();
    std::fs::remove_dir_all(&live).unwrap();
    dir
}

#[tokio::test]
async fn a_log_cut_short_is_refused_unless_inspected_or_accepted() {
    let dir = cut_short().await;
    let path = dir.path().join("old");

    let refused = SledEventStore::open(&path).unwrap_err();
    assert!(
        matches!(
            refused,
            OpenError::LostEvents {
                durable: 20,
                found: 10,
                ..
            }
        ),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(
        message.contains("lost events") && message.contains("ends at position 10"),
        "{message}"
    );

    // Inspection: the surviving events read, the log ends with the error, writes are
    // refused, `verify` reports it, and the mark stays: the next open refuses again.
    {
        let store = SledConfig::new(&path)
            .on_damaged_log(DamagedLog::Inspect)
            .open()
            .unwrap();
        assert!(matches!(store.damage(), Some(Error::Corrupt { .. })));
        let items: Vec<_> = store.read_all(Position::START, None).collect().await;
        assert_eq!(items.len(), 11);
        assert!(items[..10].iter().all(Result::is_ok));
        let Err(Error::Corrupt { location, reason }) = &items[10] else {
            panic!("{:?}", items[10]);
        };
        assert_eq!(location, "log positions 11..=20");
        assert!(reason.contains("lost"), "{reason}");
        let refused = append_one(&store, 99).await.unwrap_err();
        assert!(matches!(refused, Error::Corrupt { .. }), "{refused:?}");
        let found = verify(&store, |_| {}).await.unwrap();
        assert!(!found.is_intact());
        assert!(
            found
                .problems
                .iter()
                .any(|p| p.to_string().contains("log positions 11..=20")),
            "{:?}",
            found.problems
        );
    }
    assert!(matches!(
        SledEventStore::open(&path),
        Err(OpenError::LostEvents { .. })
    ));

    // Accepting the shorter log: it opens, appends go on from its end, and later opens
    // are ordinary.
    {
        let store = SledConfig::new(&path)
            .on_damaged_log(DamagedLog::Accept)
            .open()
            .unwrap();
        assert!(store.damage().is_none());
        assert_eq!(append_one(&store, 11).await.unwrap(), 11);
    }
    let store = SledEventStore::open(&path).unwrap();
    assert_eq!(count(&store).await, 11);
}

#[tokio::test]
async fn a_missing_mark_opens_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    for durability in [
        cqrs_sled::Durability::Flushed,
        cqrs_sled::Durability::Synced,
        cqrs_sled::Durability::Buffered,
    ] {
        let store = SledConfig::new(&path)
            .durability(durability)
            .open()
            .unwrap();
        let last = append_one(&store, 1).await.unwrap();
        drop(store);
        // Each durability records the end of the log when the store closes at the latest.
        let store = SledEventStore::open(&path).unwrap();
        assert_eq!(count(&store).await, last, "{durability:?}");
    }
    // A store written by a version without marks has none: not an error.
    std::fs::remove_file(path.join("cqrs-sled.mark")).unwrap();
    drop(SledEventStore::open(&path).unwrap());
    // It was written again when the store closed; now damage it.
    let mark = path.join("cqrs-sled.mark");
    let mut bytes = std::fs::read(&mark).unwrap();
    bytes[12] ^= 0x40;
    std::fs::write(&mark, &bytes).unwrap();
    let refused = SledEventStore::open(&path).unwrap_err();
    assert!(
        matches!(&refused, OpenError::Corrupt { reason, .. } if reason.contains("mark")),
        "{refused:?}"
    );
    let store = SledConfig::new(&path)
        .on_damaged_log(DamagedLog::Accept)
        .open()
        .unwrap();
    assert_eq!(count(&store).await, 3);
}
