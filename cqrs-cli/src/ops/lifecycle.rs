//! `archive`, `restore`, `delete` and `truncate`: retiring streams.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cqrs_core::{EventStore, ExpectedVersion, RecordedEvent, StreamDeleted, StreamId};
use futures::StreamExt;
use serde_json::{Value, json};

use super::progress::Bar;
use super::{Operations, Report};
use crate::archive::{ArchivedSnapshot, Reader, StreamHead, Writer};
use crate::{ArchiveArgs, DeleteArgs, Error, RestoreArgs, Result, TruncateArgs};

/// A stream read through: its version and how many events it holds.
struct Chosen {
    stream: StreamId,
    version: u64,
    first_version: u64,
    events: u64,
    /// Its last record is a tombstone.
    deleted: bool,
}

impl Chosen {
    /// Refuses a stream without events or a deleted one.
    fn live(self) -> Result<Self> {
        if self.events == 0 {
            return Err(cqrs_core::Error::StreamNotFound {
                stream: self.stream,
            }
            .into());
        }
        if self.deleted {
            return Err(cqrs_core::Error::StreamDeleted {
                stream: self.stream,
                version: self.version,
            }
            .into());
        }
        Ok(self)
    }
}

fn parse_stream(text: &str) -> Result<StreamId> {
    Ok(text.parse::<StreamId>().map_err(cqrs_core::Error::from)?)
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_owned(),
        source,
    }
}

impl<S: EventStore + Clone + 'static> Operations<S> {
    pub(super) async fn archive(&self, args: &ArchiveArgs) -> Result<Report> {
        if !args.dry_run && args.to.exists() {
            return Err(Error::Usage(format!(
                "{} exists: an archive is never overwritten; choose another file",
                args.to.display()
            )));
        }
        let chosen = self.choose_for_archive(args).await?;
        let total: u64 = chosen.iter().map(|c| c.events).sum();
        let listed: Vec<Value> = chosen
            .iter()
            .map(|c| json!({ "stream": c.stream.to_string(), "version": c.version, "events": c.events }))
            .collect();
        if args.dry_run {
            let mut text = String::new();
            for c in &chosen {
                text.push_str(&format!(
                    "would archive {} ({} events, version {})\n",
                    c.stream, c.events, c.version
                ));
            }
            text.push_str(&format!(
                "dry run: {} stream(s), {total} event(s) would be archived to {}\n",
                chosen.len(),
                args.to.display()
            ));
            return Ok(Report::ok(
                text,
                json!({ "dry_run": true, "file": args.to, "streams": listed, "events": total }),
            ));
        }
        let sha256 = self.write_archive(&args.to, &chosen, total).await?;
        let mut text = format!(
            "archived {} stream(s), {total} event(s) to {} (sha256 {sha256})\n",
            chosen.len(),
            args.to.display()
        );
        let (mut deleted, mut kept) = (Vec::new(), Vec::new());
        if !args.keep {
            for c in &chosen {
                let expected = ExpectedVersion::Exact(c.version);
                match self.store.delete_stream(&c.stream, expected).await {
                    Ok(tombstone) => deleted.push(json!({
                        "stream": c.stream.to_string(),
                        "tombstone_version": tombstone.version,
                        "tombstone_position": tombstone.position.to_string(),
                    })),
                    // Written to since it was exported: it stays, whole, in the store.
                    Err(cqrs_core::Error::Conflict { actual, .. }) => {
                        text.push_str(&format!(
                            "kept {}: it reached version {actual} while it was archived \
                             (the archive holds it up to version {})\n",
                            c.stream, c.version
                        ));
                        kept.push(json!({ "stream": c.stream.to_string(), "version": actual }));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            text.push_str(&format!(
                "deleted {} stream(s) from the store\n",
                deleted.len()
            ));
        }
        Ok(Report::ok(
            text,
            json!({
                "dry_run": false,
                "file": args.to,
                "sha256": sha256,
                "streams": listed,
                "events": total,
                "deleted": deleted,
                "kept_changed": kept,
            }),
        ))
    }

    /// The streams `args` names, or those whose last event is older than `--before`.
    async fn choose_for_archive(&self, args: &ArchiveArgs) -> Result<Vec<Chosen>> {
        let mut chosen = Vec::new();
        if let Some(before) = &args.before {
            let cutoff = parse_instant(before)?;
            let mut streams = pin!(self.store.list_streams());
            while let Some(info) = streams.next().await {
                let info = info?;
                let of_type = args
                    .aggregate_type
                    .as_deref()
                    .is_none_or(|t| t == info.stream.aggregate_type());
                if !of_type {
                    continue;
                }
                let last = self.last_event(&info.stream, info.version).await?;
                match last {
                    Some(last)
                        if !StreamDeleted::is_tombstone(&last) && last.recorded_at < cutoff =>
                    {
                        let read = self.survey(info.stream, Some(last.version)).await?;
                        chosen.push(read.live()?);
                    }
                    _ => {}
                }
            }
            chosen.sort_by(|a, b| a.stream.cmp(&b.stream));
        } else {
            for text in &args.stream {
                let stream = parse_stream(text)?;
                if chosen.iter().any(|c: &Chosen| c.stream == stream) {
                    continue;
                }
                chosen.push(self.survey(stream, None).await?.live()?);
            }
        }
        Ok(chosen)
    }

    async fn last_event(&self, stream: &StreamId, version: u64) -> Result<Option<RecordedEvent>> {
        let mut read = pin!(self.store.read_stored(stream, version));
        Ok(read.next().await.transpose()?)
    }

    /// Reads `stream` through, up to version `up_to` if given (a stream read that keeps
    /// nothing but counts).
    async fn survey(&self, stream: StreamId, up_to: Option<u64>) -> Result<Chosen> {
        let (mut events, mut first_version, mut version) = (0, 0, 0);
        let mut deleted = false;
        {
            let mut read = pin!(self.store.read_stored(&stream, 1));
            while let Some(record) = read.next().await {
                let record = record?;
                if up_to.is_some_and(|v| record.version > v) {
                    break;
                }
                if events == 0 {
                    first_version = record.version;
                }
                events += 1;
                version = record.version;
                deleted = StreamDeleted::is_tombstone(&record);
            }
        }
        Ok(Chosen {
            stream,
            version,
            first_version,
            events,
            deleted,
        })
    }

    /// Writes the archive to `FILE.partial`, syncs it and renames it into place.
    async fn write_archive(&self, path: &Path, chosen: &[Chosen], total: u64) -> Result<String> {
        let partial = partial_path(path);
        let file = File::create_new(&partial).map_err(file_error(&partial))?;
        let written = self.write_streams(file, chosen, total).await;
        let sha256 = match written {
            Ok((file, sha256)) => {
                file.sync_all().map_err(file_error(&partial))?;
                sha256
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        std::fs::rename(&partial, path).map_err(file_error(path))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename is durable once the directory is synced (not possible on every
            // platform; the archive itself is synced already).
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(sha256)
    }

    async fn write_streams(
        &self,
        file: File,
        chosen: &[Chosen],
        total: u64,
    ) -> Result<(File, String)> {
        let path = Path::new("archive");
        let mut writer = Writer::new(BufWriter::new(file)).map_err(file_error(path))?;
        let mut bar = Bar::new(self.progress, "archive", total);
        let mut done = 0;
        for c in chosen {
            let snapshot = self.store.load_snapshot(&c.stream).await?;
            writer
                .stream(StreamHead {
                    stream: c.stream.to_string(),
                    version: c.version,
                    first_version: c.first_version,
                    events: c.events,
                    snapshot: snapshot.as_ref().map(ArchivedSnapshot::of),
                })
                .map_err(file_error(path))?;
            let mut written = 0;
            let mut read = pin!(self.store.read_stored(&c.stream, 1));
            while let Some(record) = read.next().await {
                let record = record?;
                if record.version > c.version {
                    break;
                }
                writer.event(&record).map_err(file_error(path))?;
                written += 1;
                done += 1;
                bar.update(done, None);
            }
            if written != c.events {
                return Err(Error::Usage(format!(
                    "{} changed while it was archived ({written} events read, {} counted); \
                     nothing was deleted, run the archive again",
                    c.stream, c.events
                )));
            }
        }
        bar.finish();
        let (out, sha256) = writer.finish().map_err(file_error(path))?;
        let file = out
            .into_inner()
            .map_err(|e| file_error(path)(e.into_error()))?;
        Ok((file, sha256))
    }

    pub(super) async fn restore(&self, args: &RestoreArgs) -> Result<Report> {
        let only = args.stream.as_deref().map(parse_stream).transpose()?;
        // First pass: the whole file is checked before anything is written.
        let bad = |reason: String| Error::BadArchive {
            path: args.from.clone(),
            reason,
        };
        let open = || -> Result<Reader<BufReader<File>>> {
            let file = File::open(&args.from).map_err(file_error(&args.from))?;
            Reader::new(BufReader::new(file)).map_err(bad)
        };
        let mut reader = open()?;
        let mut listed = Vec::new();
        while let Some(archived) = reader.next_stream().map_err(bad)? {
            if only.as_ref().is_none_or(|s| *s == archived.stream) {
                listed.push((archived.stream, archived.head.events));
            }
        }
        let summary = reader
            .summary()
            .cloned()
            .ok_or_else(|| bad("no end".into()))?;
        if let Some(only) = &only
            && listed.is_empty()
        {
            return Err(Error::Usage(format!(
                "{only} is not in {}",
                args.from.display()
            )));
        }
        let total: u64 = listed.iter().map(|(_, n)| n).sum();
        let streams_json: Vec<Value> = listed
            .iter()
            .map(|(s, n)| json!({ "stream": s.to_string(), "events": n }))
            .collect();
        if args.dry_run {
            let mut text = format!(
                "{} is intact: {} stream(s), {} event(s), sha256 {}\n",
                args.from.display(),
                summary.streams,
                summary.events,
                summary.sha256
            );
            text.push_str(&format!(
                "dry run: {} stream(s), {total} event(s) would be restored\n",
                listed.len()
            ));
            return Ok(Report::ok(
                text,
                json!({ "dry_run": true, "sha256": summary.sha256, "streams": streams_json, "events": total }),
            ));
        }
        // Second pass: one stream at a time, each restored atomically.
        let mut reader = open()?;
        let mut bar = Bar::new(self.progress, "restore", total);
        let (mut done, mut restored, mut already) = (0, Vec::new(), Vec::new());
        while let Some(archived) = reader.next_stream().map_err(bad)? {
            if only.as_ref().is_some_and(|s| *s != archived.stream) {
                continue;
            }
            let n = archived.head.events;
            let stream = archived.stream.clone();
            if self.holds_exactly(&stream, &archived.records).await? {
                already.push(stream.to_string());
            } else {
                self.store
                    .restore_stream(&stream, archived.records)
                    .await
                    .map_err(|e| restore_failed(&stream, e))?;
                if let Some(snapshot) = &archived.head.snapshot {
                    let snapshot = snapshot.record().map_err(bad)?;
                    self.store.save_snapshot(&stream, snapshot).await?;
                }
                restored.push(stream.to_string());
            }
            done += n;
            bar.update(done, None);
        }
        bar.finish();
        let mut text = format!(
            "restored {} stream(s) from {}\n",
            restored.len(),
            args.from.display()
        );
        if !already.is_empty() {
            text.push_str(&format!(
                "{} stream(s) were restored already and left as they are\n",
                already.len()
            ));
        }
        text.push_str(
            "projections whose checkpoints are past the restored events do not see them: \
             replay those that dropped these streams\n",
        );
        Ok(Report::ok(
            text,
            json!({
                "dry_run": false,
                "sha256": summary.sha256,
                "restored": restored,
                "already_restored": already,
                "events": total,
            }),
        ))
    }

    /// Whether `stream` holds exactly these records (a restore that ran before).
    async fn holds_exactly(&self, stream: &StreamId, records: &[RecordedEvent]) -> Result<bool> {
        let mut read = pin!(self.store.read_stored(stream, 1));
        let mut expected = records.iter();
        while let Some(record) = read.next().await {
            if expected.next() != Some(&record?) {
                return Ok(false);
            }
        }
        Ok(expected.next().is_none())
    }

    pub(super) async fn delete(&self, args: &DeleteArgs) -> Result<Report> {
        let stream = parse_stream(&args.stream)?;
        let expected = args
            .expected_version
            .map_or(ExpectedVersion::Any, ExpectedVersion::Exact);
        if args.dry_run {
            let counted = self.survey(stream.clone(), None).await?.live()?;
            let version = counted.version;
            if let ExpectedVersion::Exact(expected) = expected
                && expected != version
            {
                return Err(cqrs_core::Error::Conflict {
                    stream,
                    expected: ExpectedVersion::Exact(expected),
                    actual: version,
                }
                .into());
            }
            let text = format!(
                "dry run: would delete {stream} ({} events, version {version})\n",
                counted.events
            );
            return Ok(Report::ok(
                text,
                json!({ "dry_run": true, "stream": stream.to_string(), "version": version, "events": counted.events }),
            ));
        }
        let tombstone = self.store.delete_stream(&stream, expected).await?;
        Ok(Report::ok(
            format!(
                "deleted {stream}: tombstone at version {} (position {})\n",
                tombstone.version, tombstone.position
            ),
            json!({
                "dry_run": false,
                "stream": stream.to_string(),
                "tombstone_version": tombstone.version,
                "tombstone_position": tombstone.position.to_string(),
            }),
        ))
    }

    pub(super) async fn truncate(&self, args: &TruncateArgs) -> Result<Report> {
        let stream = parse_stream(&args.stream)?;
        if args.dry_run {
            let whole = self.survey(stream.clone(), None).await?.live()?;
            let before = match args.before {
                Some(before) => {
                    let snapshot = self.store.load_snapshot(&stream).await?;
                    cqrs_core::check_truncation(&stream, before, whole.version, snapshot.as_ref())?;
                    before
                }
                // A snapshot taken now would be at the stream's version.
                None => whole.version,
            };
            let cut = self
                .survey(stream.clone(), Some(before.saturating_sub(1)))
                .await?;
            let removed = cut.events;
            return Ok(Report::ok(
                format!(
                    "dry run: would remove {removed} event(s) of {stream} before version {before}\n"
                ),
                json!({ "dry_run": true, "stream": stream.to_string(), "before": before, "events": removed }),
            ));
        }
        let before = match args.before {
            Some(before) => before,
            None => self.snapshot_stream(&stream).await?,
        };
        let removed = self.store.truncate_stream(&stream, before).await?;
        Ok(Report::ok(
            format!("removed {removed} event(s) of {stream} before version {before}\n"),
            json!({ "dry_run": false, "stream": stream.to_string(), "before": before, "events": removed }),
        ))
    }
}

fn restore_failed(stream: &StreamId, e: cqrs_core::Error) -> Error {
    match Error::from(e) {
        Error::Usage(reason) => Error::Usage(format!(
            "cannot restore {stream}: {reason} (the streams before it in the archive are restored; \
             run the restore again once this is mended: restored streams are skipped)"
        )),
        other => other,
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Parses `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_instant(text: &str) -> Result<SystemTime> {
    let bad = || {
        Error::Usage(format!(
            "bad date {text:?}: write YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)"
        ))
    };
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let numbers = |s: &str, sep: char, n: usize| -> Option<Vec<i64>> {
        let parts: Vec<i64> = s
            .split(sep)
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        (parts.len() == n).then_some(parts)
    };
    let ymd = numbers(date, '-', 3).ok_or_else(bad)?;
    let hms = match time {
        Some(time) => numbers(time, ':', 3).ok_or_else(bad)?,
        None => vec![0, 0, 0],
    };
    let (y, m, d) = (ymd[0], ymd[1], ymd[2]);
    let valid = (1..=12).contains(&m)
        && (1..=31).contains(&d)
        && (0..24).contains(&hms[0])
        && (0..60).contains(&hms[1])
        && (0..60).contains(&hms[2]);
    if !valid || y < 1970 {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    let secs = days * 86_400 + hms[0] * 3_600 + hms[1] * 60 + hms[2];
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of the civil
/// calendar conversion in `output`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::rfc3339;

    #[test]
    fn dates_parse_to_utc_instants() {
        let at = |t: &str| parse_instant(t).map(rfc3339).map_err(|e| e.to_string());
        assert_eq!(at("2026-12-01"), Ok("2026-12-01T00:00:00.000000Z".into()));
        assert_eq!(
            at("2000-02-29T13:14:15Z"),
            Ok("2000-02-29T13:14:15.000000Z".into())
        );
        assert_eq!(at("1970-01-01"), Ok("1970-01-01T00:00:00.000000Z".into()));
        for bad in [
            "2026-13-01",
            "yesterday",
            "2026-12-01T10:00:00",
            "2026-12",
            "1969-12-31",
        ] {
            assert!(at(bad).is_err(), "{bad} must be refused");
        }
    }
}
