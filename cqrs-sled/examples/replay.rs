//! Replays a large log, to measure throughput and peak memory (RSS) of `read_all`.
//!
//! ```text
//! cargo run --release -p cqrs-sled --example replay -- populate /tmp/replay 1000000
//! /usr/bin/time -v cargo run --release -p cqrs-sled --example replay -- store /tmp/replay
//! /usr/bin/time -v cargo run --release -p cqrs-sled --example replay -- raw /tmp/replay
//! ```
//!
//! `CQRS_SLED_CACHE_MB` sets sled's cache (default: the store's, 32 MiB), and
//! `CQRS_SLED_COMPRESS=0` populates without compressed log records (format 3).
//!
//! `populate DIR N` writes N events to a store in `DIR/store` and the same payloads to a
//! plain sled tree in `DIR/raw`; `store DIR [LIMIT]` replays the store (or its first LIMIT
//! events) with `read_all` and JSON decoding; `raw DIR` iterates the plain tree with the same decoding. Each prints
//! events per second, and on standard error the resident set after opening the database
//! and after the replay, to tell sled's open cost from the replay's own. (Run the built
//! binary under `/usr/bin/time -v` rather than `cargo run`, so that the peak RSS is the
//! replay's.)

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use cqrs_core::{EventData, EventLog, ExpectedVersion, Position, StreamId};
use cqrs_sled::{Durability, SledConfig};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum AccountEvent {
    Deposited {
        account: String,
        amount_cents: i64,
        note: String,
    },
}

fn payload(n: u64) -> Vec<u8> {
    serde_json::to_vec(&AccountEvent::Deposited {
        account: format!("acc-{}", n % 1000),
        amount_cents: i64::try_from(n % 10_000).unwrap_or(0),
        note: "monthly salary".into(),
    })
    .unwrap_or_default()
}

/// sled's page cache, in bytes: `CQRS_SLED_CACHE_MB`, or the store's default.
fn cache() -> u64 {
    std::env::var("CQRS_SLED_CACHE_MB")
        .ok()
        .and_then(|mb| mb.parse::<u64>().ok())
        .map_or(SledConfig::DEFAULT_CACHE_CAPACITY, |mb| mb << 20)
}

fn raw_db(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir.join("raw"))
        .cache_capacity(cache())
        .open()
        .expect("open raw sled")
}

/// Whether the store writes compressed log records: `CQRS_SLED_COMPRESS=0` turns it off
/// (the default is the store's: on).
fn compress() -> bool {
    std::env::var("CQRS_SLED_COMPRESS").map_or(true, |v| v != "0")
}

fn open_store(dir: &Path) -> cqrs_sled::SledEventStore {
    SledConfig::new(dir.join("store"))
        .cache_capacity(cache())
        .compress_records(compress())
        .durability(Durability::Buffered)
        .open()
        .expect("open store")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: replay populate DIR N | store DIR [LIMIT] | raw DIR";
    let (Some(mode), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let start = Instant::now();
    let count = match mode.as_str() {
        "populate" => {
            let events: u64 = args
                .get(3)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1_000_000);
            let store = open_store(dir);
            let raw = raw_db(dir);
            let mut n = 0;
            while n < events {
                let size = 1000.min(events - n);
                let stream = StreamId::new("account", format!("acc-{}", n / 1000)).expect("id");
                let batch = (n..n + size)
                    .map(|i| EventData::new("Deposited", payload(i)))
                    .collect();
                store
                    .append(&stream, ExpectedVersion::NoStream, batch)
                    .await
                    .expect("append");
                let mut raw_batch = sled::Batch::default();
                for i in n..n + size {
                    raw_batch.insert(&i.to_be_bytes()[..], payload(i));
                }
                raw.apply_batch(raw_batch).expect("raw batch");
                n += size;
            }
            store.flush().expect("flush");
            raw.flush().expect("flush");
            events
        }
        "store" => {
            let store = open_store(dir);
            eprintln!("resident after open: {} KiB", resident_kib());
            let mut count = 0u64;
            let limit = args.get(3).and_then(|n| n.parse().ok());
            let mut log = std::pin::pin!(store.read_all(Position::START, limit));
            while let Some(record) = log.next().await {
                let record = record.expect("record");
                let event: AccountEvent = serde_json::from_slice(&record.payload).expect("json");
                black_box(event);
                count += 1;
            }
            count
        }
        "raw" => {
            let raw = raw_db(dir);
            eprintln!("resident after open: {} KiB", resident_kib());
            let mut count = 0u64;
            for item in raw.iter() {
                let (_, value) = item.expect("item");
                let event: AccountEvent = serde_json::from_slice(&value).expect("json");
                black_box(event);
                count += 1;
            }
            count
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let secs = start.elapsed().as_secs_f64();
    eprintln!("resident at the end: {} KiB", resident_kib());
    println!(
        "{mode}: {count} events in {secs:.2} s = {:.0} events/s",
        count as f64 / secs
    );
}

/// The process's resident set now (`VmRSS`), 0 where `/proc` is missing.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
