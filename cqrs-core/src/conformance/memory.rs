//! Streaming reads: a large stream is read in bounded memory (measured in a child
//! process).

use std::io::{Read, Write};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::support::{EVENT_TYPE, append_ok, fresh_stream};
use crate::{EventData, EventLog, ExpectedVersion, Position, StreamId};

/// **Contract 5 (streaming reads).** 100,000 events of about 1 KiB each (appended in
/// batches of 1,000) are read back with `read_stream` and then `read_all`, one at a time
/// without collecting them: versions are contiguous and positions strictly increase.
/// `read_all` then reads the log a second time. Where `/proc/self/status` exists
/// (Linux), the resident set may grow by less than 80 MiB during each of the first two
/// reads (a store may fill its own bounded caches then) and by less than 16 MiB during
/// the second `read_all`, when those caches are warm: a store that materialised the
/// stream would need ~100 MiB more on every read. Where it does not exist, the case says `skipped` for the memory bound
/// on standard error (the reads are still checked).
///
/// Run by [`store_conformance_tests!`](crate::store_conformance_tests), the case measures
/// in a child process: it runs its own test binary again, filtered to this one test, with
/// the environment variable `CQRS_CONFORMANCE_CHILD` naming it. The child gets its own
/// store from the factory, appends, reads and samples the resident set, and prints what
/// it measured; the parent checks the bound (its own store stays unused). So the other
/// cases, which run in parallel threads of the test process, neither add to the growth
/// nor hide it with memory they freed. The child must succeed within 5 minutes (it is
/// killed after that). Called outside the macro, the case measures in its own process,
/// and its messages say so.
///
/// Assumes a fresh, empty store. Takes from a few seconds to tens of seconds (sled in a
/// debug build).
pub async fn stream_large_in_bounded_memory<S: EventLog + Clone + 'static>(store: S) {
    // A reader that materialised the stream would add at least the ~100 MiB of payloads.
    // A streaming one adds its chunk buffers, plus whatever the backend caches: the
    // first reads may fill the store's own bounded caches (sled 0.34 keeps most of a
    // 100,000-event log resident after a first read_all whatever its cache capacity: its
    // LRU applies page accesses in batches of 64 per shard, 256 shards; measured in the
    // child, debug build: 37-56 MiB, under 1 MiB for the memory and PostgreSQL stores).
    // So the first reads have a loose bound, and a second read_all of the same log, with
    // the caches warm, a tight one: reading it again must cost nothing that grows with
    // the log.
    const MAX_COLD_GROWTH: u64 = 80 * 1024 * 1024;
    const MAX_WARM_GROWTH: u64 = 16 * 1024 * 1024;

    let case = super::current_case();
    if case.is_some() && std::env::var(CHILD_ENV).ok().as_deref() == case {
        let line = format!(
            "\n{MEASURE_TAG} {}\n",
            read_large_stream(&store).await.fields()
        );
        let mut stdout = std::io::stdout();
        // Straight to the stream, past the harness's capture: the parent reads it.
        if let Err(e) = stdout
            .write_all(line.as_bytes())
            .and_then(|()| stdout.flush())
        {
            panic!("the child process cannot print what it measured: {e}");
        }
        return;
    }
    let (measured, place) = match case {
        Some(case) => (
            measure_in_child(case).await,
            "in a child process that ran only this case",
        ),
        None => (
            read_large_stream(&store).await,
            "in this process, where other work may run too (the case was called outside \
             store_conformance_tests!, so it could not measure in a child process)",
        ),
    };
    for (what, grown, bound) in [
        ("read_stream", measured.stream, MAX_COLD_GROWTH),
        ("read_all", measured.log, MAX_COLD_GROWTH),
        ("a second read_all", measured.log_again, MAX_WARM_GROWTH),
    ] {
        let Some(grown) = grown else {
            super::say(&format!(
                "skipped: {}: the memory bound of {what}: the platform does not report the \
                 resident set (no /proc/self/status); the reads themselves were checked",
                case.unwrap_or("stream_large_in_bounded_memory")
            ));
            continue;
        };
        assert!(
            grown < bound,
            "[contract 5, streaming reads] the resident set grew by {} MiB ({grown} bytes, \
             measured {place}) while {what} read {LARGE_TOTAL} events of 1 KiB, against a \
             bound of {} MiB: reads must stream, not materialise",
            grown >> 20,
            bound >> 20
        );
    }
}

/// Set in the environment of the child process of [`stream_large_in_bounded_memory`]
/// to the harness name of the case it runs.
const CHILD_ENV: &str = "CQRS_CONFORMANCE_CHILD";

/// Starts the line on which that child prints what it measured.
const MEASURE_TAG: &str = "cqrs-conformance-measure";

/// How long that child may take before it is killed and the case fails.
const CHILD_DEADLINE: Duration = Duration::from_secs(300);

/// The number of events of the large stream.
const LARGE_TOTAL: u64 = 100_000;

/// The resident set's growth during each read of the large stream; `None` where the
/// platform does not report the resident set.
#[derive(Debug)]
struct ReadGrowth {
    stream: Option<u64>,
    log: Option<u64>,
    /// The second `read_all`, once the store's caches hold what the first one loaded.
    log_again: Option<u64>,
}

impl ReadGrowth {
    /// `stream_growth=<bytes> log_growth=<bytes> log_again_growth=<bytes>`, with
    /// `unknown` for a growth the platform did not report.
    fn fields(&self) -> String {
        let show = |grown: Option<u64>| grown.map_or("unknown".to_owned(), |g| g.to_string());
        format!(
            "stream_growth={} log_growth={} log_again_growth={}",
            show(self.stream),
            show(self.log),
            show(self.log_again)
        )
    }

    /// Reads [`fields`](Self::fields) back from the first line of `output` holding
    /// [`MEASURE_TAG`] (the harness may have printed the test's name before it, on the
    /// same line).
    fn parse(output: &str) -> Option<Self> {
        let fields = output
            .lines()
            .find_map(|line| line.split_once(MEASURE_TAG))?
            .1;
        let (mut stream, mut log, mut log_again) = (None, None, None);
        for field in fields.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            let value = match value {
                "unknown" => None,
                bytes => Some(bytes.parse().ok()?),
            };
            match key {
                "stream_growth" => stream = Some(value),
                "log_growth" => log = Some(value),
                "log_again_growth" => log_again = Some(value),
                _ => return None,
            }
        }
        Some(ReadGrowth {
            stream: stream?,
            log: log?,
            log_again: log_again?,
        })
    }
}

/// Runs the test `case` again in a child process (this test binary, filtered to that one
/// test, with [`CHILD_ENV`] naming it) and returns what it measured. Panics, with the
/// child's output, if the child cannot start, fails, prints no measurement, or is still
/// running after [`CHILD_DEADLINE`] (it is killed then).
async fn measure_in_child(case: &str) -> ReadGrowth {
    let exe = std::env::current_exe().unwrap_or_else(|e| {
        panic!("[contract 5, streaming reads] cannot find the test binary to run {case} in: {e}")
    });
    let mut child = Command::new(&exe)
        .args([case, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, case)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "[contract 5, streaming reads] cannot start {} to run {case}: {e}",
                exe.display()
            )
        });
    // Read both pipes while the child runs, so that it never blocks on a full one.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < CHILD_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let why = match outcome {
                    Err(e) => format!("could not be waited for ({e})"),
                    _ => format!("was still running after {} s", CHILD_DEADLINE.as_secs()),
                };
                panic!(
                    "[contract 5, streaming reads] the child process running {case} {why}; it was killed"
                );
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let output = format!(
        "--- its standard output:\n{stdout}\n--- its standard error:\n{}",
        stderr.join().unwrap_or_default()
    );
    assert!(
        status.success(),
        "[contract 5, streaming reads] the child process running {case} failed ({status})\n{output}"
    );
    ReadGrowth::parse(&stdout).unwrap_or_else(|| {
        panic!(
            "[contract 5, streaming reads] the child process running {case} printed no \
             `{MEASURE_TAG}` line\n{output}"
        )
    })
}

/// Reads a child's pipe to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Appends the large stream and reads it back three times (`read_stream`, then
/// `read_all` twice), checking each record, and returns how much the resident set grew
/// during each read.
async fn read_large_stream<S: EventLog>(store: &S) -> ReadGrowth {
    const BATCH: u64 = 1_000;
    const PAYLOAD: usize = 1024;
    const SAMPLE_EVERY: u64 = 2_500;

    let stream = fresh_stream("large");
    let payload = |i: u64| {
        let mut bytes = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
        bytes.resize(PAYLOAD - 2, b'x');
        bytes.extend_from_slice(b"\"}");
        bytes
    };
    for b in 0..LARGE_TOTAL / BATCH {
        let batch = (b * BATCH..(b + 1) * BATCH)
            .map(|i| EventData::new(EVENT_TYPE, payload(i + 1)))
            .collect();
        let result = append_ok(store, &stream, ExpectedVersion::Exact(b * BATCH), batch).await;
        assert_eq!(result.version, (b + 1) * BATCH);
    }

    let baseline = resident_bytes();
    let mut peak = baseline;
    let mut next_version = 1;
    {
        let mut records = pin!(store.read_stream(&stream, 1));
        while let Some(record) = records.next().await {
            let record = record.unwrap_or_else(|e| {
                panic!("[contract 5, streaming reads] read_stream failed at {next_version}: {e:?}")
            });
            assert_eq!(
                record.version, next_version,
                "[contract 1, streams] read_stream yields contiguous versions"
            );
            assert_eq!(
                record.payload.len(),
                PAYLOAD,
                "[contract 6, envelope] payload of version {next_version}"
            );
            next_version += 1;
            if next_version % SAMPLE_EVERY == 0 {
                sample(&mut peak);
            }
        }
    }
    assert_eq!(
        next_version - 1,
        LARGE_TOTAL,
        "[contract 5, streaming reads] read_stream yields all {LARGE_TOTAL} events"
    );
    sample(&mut peak);
    let stream_growth = growth(baseline, peak);

    let log = read_all_large(store, &stream).await;
    let log_again = read_all_large(store, &stream).await;
    ReadGrowth {
        stream: stream_growth,
        log,
        log_again,
    }
}

/// Reads the whole log, which holds only the large stream, checking each record, and
/// returns how much the resident set grew meanwhile.
async fn read_all_large<S: EventLog>(store: &S, stream: &StreamId) -> Option<u64> {
    const SAMPLE_EVERY: u64 = 2_500;
    let baseline = resident_bytes();
    let mut peak = baseline;
    let mut next_version = 1;
    let mut last = Position::START;
    {
        let mut records = pin!(store.read_all(Position::START, None));
        while let Some(record) = records.next().await {
            let record = record.unwrap_or_else(|e| {
                panic!("[contract 5, streaming reads] read_all failed after {last}: {e:?}")
            });
            assert_eq!(
                (&record.stream, record.version),
                (stream, next_version),
                "[contract 4, global log] read_all yields the stream's events in order \
                 (this case needs a fresh store)"
            );
            assert!(
                record.position > last,
                "[contract 4, global log] positions strictly increase"
            );
            last = record.position;
            next_version += 1;
            if next_version % SAMPLE_EVERY == 0 {
                sample(&mut peak);
            }
        }
    }
    assert_eq!(
        next_version - 1,
        LARGE_TOTAL,
        "[contract 5, streaming reads] read_all yields all {LARGE_TOTAL} events"
    );
    sample(&mut peak);
    growth(baseline, peak)
}

/// The process's resident set size, where the platform reports it.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Raises `peak` to the current resident set size.
fn sample(peak: &mut Option<u64>) {
    if let (Some(now), Some(p)) = (resident_bytes(), peak.as_mut()) {
        *p = (*p).max(now);
    }
}

fn growth(baseline: Option<u64>, peak: Option<u64>) -> Option<u64> {
    Some(peak?.saturating_sub(baseline?))
}
