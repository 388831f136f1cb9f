//! Benchmarks of the sled event store, each against a raw-sled baseline measured in the
//! same run (see docs/performance.md).
//!
//! Run: `cargo bench -p cqrs-sled`. After each group a `RATIO` line compares the store
//! with its baseline (throughput of the store / throughput of the baseline). The replay
//! size defaults to 1,000,000 events; `CQRS_SLED_BENCH_EVENTS=N` changes it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cqrs_core::{
    Aggregate, DomainEvent, EventData, EventLog, ExpectedVersion, Position, Repository,
    SnapshotPolicy, StreamId,
};
use cqrs_sled::{Durability, SledConfig, SledEventStore};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

const WRITERS: u64 = 16;
const CACHE: u64 = 32 << 20;

/// The domain event every benchmark writes and decodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited {
        account: String,
        amount_cents: i64,
        note: String,
    },
}

impl DomainEvent for AccountEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Deposited"];
    fn event_type(&self) -> &'static str {
        "Deposited"
    }
}

fn payload(n: u64) -> Vec<u8> {
    serde_json::to_vec(&AccountEvent::Deposited {
        account: format!("acc-{}", n % 1000),
        amount_cents: i64::try_from(n % 10_000).unwrap_or(0),
        note: "monthly salary".into(),
    })
    .unwrap_or_default()
}

fn event(n: u64) -> EventData {
    EventData::new("Deposited", payload(n))
}

/// Mean time per iteration of each benchmark, measured by our own `iter_custom` loops
/// (warm-up included), to print ratios at the end of a group.
#[derive(Default)]
struct Tally(Mutex<HashMap<&'static str, (Duration, u64)>>);

impl Tally {
    fn add(&self, name: &'static str, elapsed: Duration, iters: u64) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name).or_default();
        entry.0 += elapsed;
        entry.1 += iters;
        elapsed
    }

    /// Prints operations per second of both (an iteration is `per_iter` operations) and
    /// the store's throughput over the baseline's.
    fn ratio(&self, group: &str, store: &'static str, baseline: &'static str, per_iter: f64) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let secs = |name| {
            map.get(name)
                .map(|(d, n): &(Duration, u64)| d.as_secs_f64() / (*n).max(1) as f64)
        };
        if let (Some(s), Some(b)) = (secs(store), secs(baseline)) {
            println!(
                "RATIO {group}: {store} = {:.0}/s, {baseline} = {:.0}/s, ratio {:.2}",
                per_iter / s,
                per_iter / b,
                b / s
            );
        }
    }
}

static KEYS: AtomicU64 = AtomicU64::new(0);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn raw_db(path: &Path) -> sled::Db {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE)
        .open()
        .unwrap()
}

/// How many of `iters` operations writer `w` of `writers` does.
fn share(iters: u64, w: u64, writers: u64) -> u64 {
    iters / writers + u64::from(w < iters % writers)
}

fn group_commit(c: &mut Criterion) {
    let rt = runtime();
    let tally = Tally::default();
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_db(&dir.path().join("raw"));
    let value = payload(1);
    let mut group = c.benchmark_group("append_1_event_16_writers_flushed");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // The flush-per-op baselines from one writer: what an append costs without group
    // commit (sled flush, and sled flush plus fsync as `Synced` does).
    let data_file = std::fs::File::open(dir.path().join("raw").join("db")).unwrap();
    for (name, fsync) in [
        ("raw_sled_insert_flush_per_op_1_writer", false),
        ("raw_sled_insert_flush_fsync_per_op_1_writer", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let key = KEYS.fetch_add(1, Ordering::Relaxed).to_be_bytes();
                    raw.insert(key, value.as_slice()).unwrap();
                    raw.flush().unwrap();
                    if fsync {
                        data_file.sync_all().unwrap();
                    }
                }
                tally.add(name, start.elapsed(), iters)
            });
        });
    }

    group.bench_function("raw_sled_insert_flush_per_op_16_writers", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for w in 0..WRITERS {
                    let (raw, value) = (&raw, &value);
                    s.spawn(move || {
                        for _ in 0..share(iters, w, WRITERS) {
                            let key = KEYS.fetch_add(1, Ordering::Relaxed).to_be_bytes();
                            raw.insert(key, value.as_slice()).unwrap();
                            raw.flush().unwrap();
                        }
                    });
                }
            });
            tally.add(
                "raw_sled_insert_flush_per_op_16_writers",
                start.elapsed(),
                iters,
            )
        });
    });

    for (name, durability) in [
        ("store_flushed", Durability::Flushed),
        ("store_synced", Durability::Synced),
    ] {
        let store = SledConfig::new(dir.path().join(name))
            .durability(durability)
            .open()
            .unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..WRITERS)
                        .map(|w| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                let stream = StreamId::new("account", format!("w{w}")).unwrap();
                                for n in 0..share(iters, w, WRITERS) {
                                    store
                                        .append(&stream, ExpectedVersion::Any, vec![event(n)])
                                        .await
                                        .unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
                tally.add(name, start.elapsed(), iters)
            });
        });
    }
    group.finish();
    let name = "append_1_event_16_writers_flushed";
    tally.ratio(
        name,
        "store_flushed",
        "raw_sled_insert_flush_per_op_1_writer",
        1.0,
    );
    tally.ratio(
        name,
        "store_flushed",
        "raw_sled_insert_flush_per_op_16_writers",
        1.0,
    );
    tally.ratio(
        name,
        "store_synced",
        "raw_sled_insert_flush_fsync_per_op_1_writer",
        1.0,
    );
    tally.ratio(name, "store_synced", "store_flushed", 1.0);
}

fn buffered(c: &mut Criterion) {
    let rt = runtime();
    let tally = Tally::default();
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_db(&dir.path().join("raw"));
    let store = SledConfig::new(dir.path().join("store"))
        .durability(Durability::Buffered)
        .open()
        .unwrap();
    // The raw value is as large as the store's record (payload plus envelope).
    let value = vec![b'x'; payload(1).len() + 60];
    let mut group = c.benchmark_group("append_1_event_buffered");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("raw_sled_insert", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let key = KEYS.fetch_add(1, Ordering::Relaxed).to_be_bytes();
                raw.insert(key, value.as_slice()).unwrap();
            }
            tally.add("raw_sled_insert", start.elapsed(), iters)
        });
    });
    group.bench_function("store_buffered", |b| {
        let stream = StreamId::new("account", "buffered").unwrap();
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for n in 0..iters {
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event(n)])
                        .await
                        .unwrap();
                }
            });
            tally.add("store_buffered", start.elapsed(), iters)
        });
    });
    group.finish();
    tally.ratio(
        "append_1_event_buffered",
        "store_buffered",
        "raw_sled_insert",
        1.0,
    );
}

/// Appends of 100 events (one log record of ~11 KiB), `Buffered`, to a store that
/// compresses its log records (the default) and to one that does not: the cost of
/// compressing, as a ratio measured in the same run.
fn batch(c: &mut Criterion) {
    let rt = runtime();
    let tally = Tally::default();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, compress: bool| {
        SledConfig::new(dir.path().join(name))
            .durability(Durability::Buffered)
            .compress_records(compress)
            .open()
            .unwrap()
    };
    let stores = [
        ("store_compressed", open("compressed", true)),
        ("store_uncompressed", open("uncompressed", false)),
    ];
    let mut group = c.benchmark_group("append_100_events_buffered");
    group
        .throughput(Throughput::Elements(100))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, store) in &stores {
        let name: &'static str = name;
        let stream = StreamId::new("account", "batches").unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let batches: Vec<Vec<EventData>> = (0..iters)
                    .map(|i| (i * 100..(i + 1) * 100).map(event).collect())
                    .collect();
                let start = Instant::now();
                rt.block_on(async {
                    for batch in batches {
                        store
                            .append(&stream, ExpectedVersion::Any, batch)
                            .await
                            .unwrap();
                    }
                });
                tally.add(name, start.elapsed(), iters)
            });
        });
    }
    group.finish();
    tally.ratio(
        "append_100_events_buffered",
        "store_compressed",
        "store_uncompressed",
        100.0,
    );
}

fn replay_events() -> u64 {
    std::env::var("CQRS_SLED_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn replay(c: &mut Criterion) {
    let rt = runtime();
    let tally = Tally::default();
    let events = replay_events();
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_db(&dir.path().join("raw"));
    let store = SledConfig::new(dir.path().join("store"))
        .durability(Durability::Buffered)
        .open()
        .unwrap();
    rt.block_on(async {
        let mut n = 0;
        while n < events {
            let size = 1000.min(events - n);
            let stream = StreamId::new("account", format!("acc-{}", n / 1000)).unwrap();
            let batch = (n..n + size).map(event).collect();
            store
                .append(&stream, ExpectedVersion::NoStream, batch)
                .await
                .unwrap();
            let mut raw_batch = sled::Batch::default();
            for i in n..n + size {
                raw_batch.insert(&i.to_be_bytes()[..], payload(i));
            }
            raw.apply_batch(raw_batch).unwrap();
            n += size;
        }
    });
    store.flush().unwrap();
    raw.flush().unwrap();

    let mut group = c.benchmark_group("replay_json_decode");
    group
        .throughput(Throughput::Elements(events))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("raw_sled_iter_decode", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut count = 0u64;
                for item in raw.iter() {
                    let (_, value) = item.unwrap();
                    let decoded: AccountEvent = serde_json::from_slice(&value).unwrap();
                    black_box(decoded);
                    count += 1;
                }
                assert_eq!(count, events);
            }
            tally.add("raw_sled_iter_decode", start.elapsed(), iters)
        });
    });
    group.bench_function("store_read_all_decode", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    let mut count = 0u64;
                    let mut log = std::pin::pin!(store.read_all(Position::START, None));
                    while let Some(record) = log.next().await {
                        let record = record.unwrap();
                        let decoded: AccountEvent =
                            serde_json::from_slice(&record.payload).unwrap();
                        black_box(decoded);
                        count += 1;
                    }
                    assert_eq!(count, events);
                }
            });
            tally.add("store_read_all_decode", start.elapsed(), iters)
        });
    });
    group.finish();
    tally.ratio(
        "replay_json_decode",
        "store_read_all_decode",
        "raw_sled_iter_decode",
        events as f64,
    );
}

/// A bank account: the aggregate loaded in the snapshot benchmark.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    balance_cents: i64,
    deposits: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = ();
    type Event = AccountEvent;
    type Error = Infallible;
    type Services = ();

    fn handle(&self, _: &(), _: &()) -> Result<Vec<AccountEvent>, Infallible> {
        Ok(Vec::new())
    }

    fn apply(&mut self, event: AccountEvent) {
        let AccountEvent::Deposited { amount_cents, .. } = event;
        self.balance_cents += amount_cents;
        self.deposits += 1;
    }
}

fn aggregate_load(c: &mut Criterion) {
    let rt = runtime();
    let tally = Tally::default();
    let store = SledEventStore::temporary().unwrap();
    let plain: Repository<Account, _> = Repository::new(store.clone(), ());
    let snapshots = Repository::<Account, _>::new(store.clone(), ())
        .with_snapshots(SnapshotPolicy::EveryEvents(100));
    let stream = StreamId::new("account", "big").unwrap();
    rt.block_on(async {
        for chunk in 0..100u64 {
            let batch = (chunk * 100..(chunk + 1) * 100).map(event).collect();
            store
                .append(&stream, ExpectedVersion::Exact(chunk * 100), batch)
                .await
                .unwrap();
            // A snapshot every 100 events, as the policy takes them.
            snapshots.snapshot_now("big").await.unwrap();
        }
    });
    let mut group = c.benchmark_group("load_10000_event_aggregate");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, repo) in [("no_snapshot", &plain), ("snapshot_every_100", &snapshots)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(async {
                    for _ in 0..iters {
                        let loaded = repo.load("big").await.unwrap();
                        assert_eq!(loaded.version, 10_000);
                        black_box(loaded);
                    }
                });
                tally.add(name, start.elapsed(), iters)
            });
        });
    }
    group.finish();
    tally.ratio(
        "load_10000_event_aggregate",
        "snapshot_every_100",
        "no_snapshot",
        1.0,
    );
}

criterion_group!(
    benches,
    group_commit,
    buffered,
    batch,
    replay,
    aggregate_load
);
criterion_main!(benches);
