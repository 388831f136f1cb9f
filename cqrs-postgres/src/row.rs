//! Decoding rows into records, and converting between `u64` and `BIGINT`.

use std::time::{Duration, SystemTime};

use cqrs_core::{
    Error, Metadata, Position, RecordedEvent, Result, SnapshotIgnored, SnapshotRecord, StreamId,
};
use sqlx::encode::IsNull;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgHasArrayType, PgRow, PgTypeInfo, PgValueFormat, PgValueRef,
};
use sqlx::types::Json;
use sqlx::{Decode, Encode, Postgres, Row, Type, ValueRef};
use uuid::Uuid;

use crate::checksum;

/// A `timestamptz` as microseconds since the Unix epoch, decoded from the binary wire
/// format (so the build needs neither `chrono` nor `time`, and the server does no
/// numeric conversion per row).
pub(crate) struct UnixMicros(i64);

impl UnixMicros {
    /// `time` to the microsecond (rounded down), as PostgreSQL keeps it; `None` past
    /// `timestamptz`'s range of this encoding.
    pub(crate) fn from_system_time(time: SystemTime) -> Option<Self> {
        let micros = match time.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).ok()?,
            Err(before) => {
                let before = before.duration();
                // Rounded down: a time between two microseconds goes to the earlier one.
                let mut micros = i64::try_from(before.as_micros()).ok()?;
                if before.subsec_nanos() % 1_000 != 0 {
                    micros = micros.checked_add(1)?;
                }
                micros.checked_neg()?
            }
        };
        micros.checked_sub(PG_EPOCH_MICROS)?;
        Some(UnixMicros(micros))
    }
}

/// `timestamptz`'s type oid.
const TIMESTAMPTZ: Oid = Oid(1184);
/// `timestamptz[]`'s type oid.
const TIMESTAMPTZ_ARRAY: Oid = Oid(1185);
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl Type<Postgres> for UnixMicros {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(TIMESTAMPTZ)
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        ty.oid() == Some(TIMESTAMPTZ)
    }
}

impl PgHasArrayType for UnixMicros {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(TIMESTAMPTZ_ARRAY)
    }
}

impl Encode<'_, Postgres> for UnixMicros {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> std::result::Result<IsNull, sqlx::error::BoxDynError> {
        let since_pg_epoch = self
            .0
            .checked_sub(PG_EPOCH_MICROS)
            .ok_or("timestamptz out of range")?;
        buf.extend(&since_pg_epoch.to_be_bytes());
        Ok(IsNull::No)
    }
}

impl<'r> Decode<'r, Postgres> for UnixMicros {
    fn decode(value: PgValueRef<'r>) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        if value.format() != PgValueFormat::Binary {
            return Err("timestamptz in text format".into());
        }
        let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
        i64::from_be_bytes(bytes)
            .checked_add(PG_EPOCH_MICROS)
            .map(UnixMicros)
            .ok_or_else(|| "timestamptz out of range".into())
    }
}

/// A `u64` as a `BIGINT` bound: values above `i64::MAX` (never handed out by this store)
/// saturate, which keeps comparisons right (`after` such a position there is nothing).
pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `u64` that must fit a `BIGINT` column exactly.
pub(crate) fn exact_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::invalid_input(format!("{what} {value} is larger than {}", i64::MAX)))
}

/// A stored `BIGINT` that must not be negative.
pub(crate) fn stored_u64(value: i64, location: impl FnOnce() -> String, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::corrupt(location(), format!("negative {what} {value}")))
}

pub(crate) fn store_error(error: sqlx::Error) -> Error {
    Error::store(error)
}

/// Decodes a row selected with `schema::EVENT_COLUMNS` (one row: see [`EventDecoder`]
/// for a read of many).
pub(crate) fn decode_event(row: &PgRow) -> Result<RecordedEvent> {
    EventDecoder::default().decode(row)
}

/// Decodes the rows of one read (selected with `schema::EVENT_COLUMNS`) as they come,
/// through one [`EventDecoder`]: a row that does not decode is an error item, a
/// database failure [`Error::Store`].
pub(crate) fn decode_rows<'a>(
    rows: impl futures::Stream<Item = std::result::Result<PgRow, sqlx::Error>> + Send + 'a,
) -> impl futures::Stream<Item = Result<RecordedEvent>> + Send + 'a {
    futures::StreamExt::scan(rows, EventDecoder::default(), |decoder, row| {
        let decoded = row
            .map_err(store_error)
            .and_then(|row| decoder.decode(&row));
        std::future::ready(Some(decoded))
    })
}

/// Decodes the rows of one read. It keeps the last stream id, so the rows of a run of
/// one stream share its strings instead of allocating and checking them again.
#[derive(Debug, Default)]
pub(crate) struct EventDecoder {
    last: Option<StreamId>,
}

impl EventDecoder {
    /// Decodes a row selected with `schema::EVENT_COLUMNS`.
    ///
    /// A row that does not decode is [`Error::Corrupt`] naming its stream and version (or
    /// its log id when even those are unreadable); a database failure is
    /// [`Error::Store`].
    pub(crate) fn decode(&mut self, row: &PgRow) -> Result<RecordedEvent> {
        let id: i64 = row.try_get_unchecked(0).map_err(store_error)?;
        // Locations are formatted only when something is wrong: this runs once per row.
        let log_location = || format!("event with log id {id}");
        let at_log = |e: sqlx::Error| Error::corrupt(log_location(), e.to_string());
        let aggregate_type: &str = row.try_get_unchecked(3).map_err(at_log)?;
        let aggregate_id: &str = row.try_get_unchecked(4).map_err(at_log)?;
        let stream = match &self.last {
            Some(last) if last.id() == aggregate_id && last.aggregate_type() == aggregate_type => {
                last.clone()
            }
            _ => {
                let stream = StreamId::new(aggregate_type, aggregate_id)
                    .map_err(|e| Error::corrupt(log_location(), e.to_string()))?;
                self.last = Some(stream.clone());
                stream
            }
        };
        decode_rest(row, id, stream)
    }
}

/// The columns of an event row after its stream.
fn decode_rest(row: &PgRow, id: i64, stream: StreamId) -> Result<RecordedEvent> {
    let at_log = |e: sqlx::Error| Error::corrupt(format!("event with log id {id}"), e.to_string());
    let raw_version: i64 = row.try_get_unchecked(5).map_err(at_log)?;
    let location = || format!("stream {stream} version {raw_version}");
    let at = |e: sqlx::Error| Error::corrupt(location(), e.to_string());
    let version = stored_u64(raw_version, location, "version")?;
    let transaction_id: i64 = row.try_get_unchecked(1).map_err(at)?;
    let position = Position::new(
        stored_u64(transaction_id, location, "transaction id")?,
        stored_u64(id, location, "log id")?,
    );
    let event_id: Uuid = row.try_get_unchecked(2).map_err(at)?;
    let event_type: String = row.try_get_unchecked(6).map_err(at)?;
    let schema_version: i64 = row.try_get_unchecked(7).map_err(at)?;
    let schema_version = u32::try_from(schema_version).map_err(|_| {
        Error::corrupt(
            location(),
            format!("schema version {schema_version} out of range"),
        )
    })?;
    let UnixMicros(micros) = row.try_get_unchecked(8).map_err(at)?;
    let recorded_at = system_time(micros)
        .ok_or_else(|| Error::corrupt(location(), format!("timestamp {micros} out of range")))?;
    let payload: Vec<u8> = row.try_get_unchecked(9).map_err(at)?;
    let metadata = decode_metadata(row, 10)
        .map_err(|e| Error::corrupt(location(), format!("metadata does not decode: {e}")))?;
    let stored: Option<i32> = row.try_get_unchecked(11).map_err(at)?;
    let computed = checksum::event(event_id, &event_type, schema_version, &payload);
    checksum::verify(stored, computed, location)?;
    Ok(RecordedEvent {
        event_id,
        stream,
        version,
        position,
        event_type,
        schema_version,
        recorded_at,
        payload,
        metadata,
    })
}

/// Decodes a `jsonb` metadata column. Most events have none (`{}`): that one is
/// recognised from its bytes, without a JSON parse.
fn decode_metadata(row: &PgRow, column: usize) -> std::result::Result<Metadata, sqlx::Error> {
    // `jsonb` in the binary format is a version byte (1) and the JSON text.
    const EMPTY: &[u8] = b"\x01{}";
    let raw = row.try_get_raw(column)?;
    if raw.format() == PgValueFormat::Binary && raw.as_bytes().ok() == Some(EMPTY) {
        return Ok(Metadata::default());
    }
    let Json(metadata): Json<Metadata> = row.try_get(column)?;
    Ok(metadata)
}

/// Decodes a snapshot from four columns of `row` starting at `first`: version, schema
/// version, payload, checksum. A damaged one is [`Error::Corrupt`] naming the stream.
pub(crate) fn decode_snapshot(
    row: &PgRow,
    first: usize,
    stream: &StreamId,
) -> Result<SnapshotRecord> {
    let location = || format!("snapshot of {stream}");
    let corrupt = |e: sqlx::Error| Error::corrupt(location(), e.to_string());
    let version: i64 = row.try_get(first).map_err(corrupt)?;
    let schema_version: i64 = row.try_get(first + 1).map_err(corrupt)?;
    let snapshot = SnapshotRecord {
        version: stored_u64(version, location, "version")?,
        schema_version: u32::try_from(schema_version).map_err(|_| {
            Error::corrupt(
                location(),
                format!("schema version {schema_version} out of range"),
            )
        })?,
        payload: row.try_get(first + 2).map_err(corrupt)?,
    };
    let stored: Option<i32> = row.try_get(first + 3).map_err(corrupt)?;
    let computed = checksum::snapshot(snapshot.version, snapshot.schema_version, &snapshot.payload);
    checksum::verify(stored, computed, location)?;
    Ok(snapshot)
}

/// What the first row of `Statements::read_from_snapshot` says about the snapshot.
pub(crate) enum SnapshotRow {
    /// The stream has no snapshot: the row's event (if any) is version 1.
    None,
    /// A usable snapshot: the row's event is the one at its version, not to be applied.
    Usable(SnapshotRecord),
    /// A snapshot that must not be used; the stream is to be read from version 1.
    Ignored(SnapshotIgnored),
}

/// Reads the snapshot columns of the first `read_from_snapshot` row.
pub(crate) fn snapshot_of_row(row: &PgRow, stream: &StreamId) -> Result<SnapshotRow> {
    let absent = row
        .try_get_raw(SNAPSHOT_COLUMN)
        .map_err(store_error)?
        .is_null();
    if absent {
        return Ok(SnapshotRow::None);
    }
    let damaged = |reason: String| Ok(SnapshotRow::Ignored(SnapshotIgnored::Damaged { reason }));
    let version = match row.try_get::<i64, _>(SNAPSHOT_COLUMN) {
        Ok(v) => match u64::try_from(v) {
            Ok(v) if v > 0 => v,
            _ => return damaged(format!("it covers version {v}")),
        },
        Err(e) => return damaged(e.to_string()),
    };
    let schema_version = match row.try_get::<i64, _>(SNAPSHOT_COLUMN + 1) {
        Ok(v) => match u32::try_from(v) {
            Ok(v) => v,
            Err(_) => return damaged(format!("schema version {v} out of range")),
        },
        Err(e) => return damaged(e.to_string()),
    };
    // The payload rides on the row of the event at the snapshot's version: without that
    // event the snapshot is ahead of the stream.
    if event_version(row)? != Some(version) {
        return Ok(SnapshotRow::Ignored(SnapshotIgnored::AheadOfStream {
            version,
        }));
    }
    let stored = match row.try_get::<Option<i32>, _>(SNAPSHOT_COLUMN + 3) {
        Ok(stored) => stored,
        Err(e) => return damaged(e.to_string()),
    };
    match row.try_get::<Vec<u8>, _>(SNAPSHOT_COLUMN + 2) {
        Ok(payload) => {
            let computed = checksum::snapshot(version, schema_version, &payload);
            if let Err(Error::Corrupt { reason, .. }) =
                checksum::verify(stored, computed, String::new)
            {
                return damaged(reason);
            }
            Ok(SnapshotRow::Usable(SnapshotRecord {
                version,
                schema_version,
                payload,
            }))
        }
        Err(e) => {
            tracing::debug!(%stream, "snapshot payload does not decode");
            damaged(e.to_string())
        }
    }
}

/// The version of a `read_from_snapshot` row's event (`None`: the row has no event).
pub(crate) fn event_version(row: &PgRow) -> Result<Option<u64>> {
    match row.try_get::<Option<i64>, _>(5) {
        Ok(None) => Ok(None),
        Ok(Some(v)) => Ok(u64::try_from(v).ok()),
        Err(e) => Err(store_error(e)),
    }
}

/// The first snapshot column of a `read_from_snapshot` row (after the event's twelve).
const SNAPSHOT_COLUMN: usize = 12;

/// Decodes a checkpoint row: commit id, sequence.
pub(crate) fn decode_checkpoint(row: &PgRow, name: &str) -> Result<Position> {
    let location = || format!("checkpoint {name:?}");
    let corrupt = |e: sqlx::Error| Error::corrupt(location(), e.to_string());
    let commit: i64 = row.try_get(0).map_err(corrupt)?;
    let sequence: i64 = row.try_get(1).map_err(corrupt)?;
    Ok(Position::new(
        stored_u64(commit, location, "commit")?,
        stored_u64(sequence, location, "sequence")?,
    ))
}

/// Microseconds since the Unix epoch as a `SystemTime`.
fn system_time(micros: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(magnitude)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(magnitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_without_wrapping() {
        assert_eq!(saturating_i64(u64::MAX), i64::MAX);
        assert_eq!(saturating_i64(7), 7);
        assert!(exact_i64(u64::MAX, "version").is_err());
        assert!(matches!(
            stored_u64(-1, || "here".into(), "version"),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(
            system_time(-1_000_000),
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(1))
        );
    }
}
