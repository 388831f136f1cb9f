//! The validated schema name and every SQL text built from it.
//!
//! User data is never spliced into SQL: the only text interpolated here is the schema
//! name, validated by [`Schema::new`] and quoted, and constants. Everything else is a
//! bound parameter.

use std::fmt;
use std::sync::Arc;

use cqrs_core::STREAM_DELETED;

use crate::error::{Error, Result};
use crate::lifecycle::LifecycleStatements;

/// A validated PostgreSQL schema name: `^[a-z_][a-z0-9_]{0,62}$`, none of PostgreSQL's
/// own schemas (`pg_*`, `information_schema`), and `public` only when allowed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Schema(Arc<str>);

impl Schema {
    pub(crate) fn new(name: &str, allow_public: bool) -> Result<Self> {
        let bytes = name.as_bytes();
        let plain = !bytes.is_empty()
            && bytes.len() <= 63
            && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let reason = if !plain {
            "expected 1 to 63 characters of [a-z0-9_], not starting with a digit"
        } else if name.starts_with("pg_") || name == "information_schema" {
            "PostgreSQL's own schemas (pg_*, information_schema) cannot hold a store"
        } else if name == "public" && !allow_public {
            "`public` is every role's default schema: opt in with `allow_public_schema()`"
        } else {
            return Ok(Schema(name.into()));
        };
        Err(Error::InvalidSchema {
            name: name.to_owned(),
            reason,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.0
    }

    /// The quoted identifier, safe to splice into SQL (the name has no `"`).
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The columns every event read selects, in the order [`crate::row`] decodes them.
pub(crate) const EVENT_COLUMNS: &str = "e.id, e.transaction_id, e.event_id, e.aggregate_type, \
    e.aggregate_id, e.version, e.event_type, e.schema_version, \
    e.recorded_at, e.payload, e.metadata, e.checksum";

/// The SQL statements of one store, built once from its schema.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) append: Arc<str>,
    pub(crate) append_fast: Arc<str>,
    pub(crate) append_many: Arc<str>,
    pub(crate) read_stream: Arc<str>,
    pub(crate) read_from_snapshot: Arc<str>,
    pub(crate) read_all: Arc<str>,
    pub(crate) read_all_of_types: Arc<str>,
    pub(crate) horizon: Arc<str>,
    pub(crate) horizon_now: Arc<str>,
    pub(crate) horizon_last: Arc<str>,
    pub(crate) horizon_last_now: Arc<str>,
    pub(crate) count_events: Arc<str>,
    pub(crate) count_events_of_types: Arc<str>,
    pub(crate) find_event: Arc<str>,
    pub(crate) events_of_transaction: Arc<str>,
    pub(crate) stream_version: Arc<str>,
    pub(crate) list_streams: Arc<str>,
    pub(crate) stats: Arc<str>,
    pub(crate) load_snapshot: Arc<str>,
    pub(crate) save_snapshot: Arc<str>,
    pub(crate) lock_for_snapshot: Arc<str>,
    pub(crate) load_checkpoint: Arc<str>,
    pub(crate) save_checkpoint: Arc<str>,
    /// `save_checkpoint` without waiting for the WAL flush.
    pub(crate) advance_checkpoint: Arc<str>,
    pub(crate) lock_checkpoint: Arc<str>,
    pub(crate) lifecycle: LifecycleStatements,
}

impl Statements {
    pub(crate) fn new(schema: &Schema) -> Self {
        let s = schema.quoted();
        let sql = |text: String| -> Arc<str> { text.into() };
        Statements {
            append: sql(format!(
                "SELECT r_outcome, r_version, r_commit, r_sequence, r_event_id, r_type, r_id \
                 FROM {s}.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            )),
            // The hot path of an append in one plain statement (no PL/pgSQL call): the
            // stream's head, the expected-version check and the insert of the batch.
            // No row back means the expected version did not match: the caller then
            // runs `append_events`, which tells a conflict from an idempotent re-append.
            // A stored id or a lost race is a unique violation, handled as for
            // `append_events`. Same outcome columns as `append_events` (outcome 0).
            //
            // The stream's last event must come from a transaction no newer than this one:
            // an event of this transaction then sorts after it in the log's
            // `(transaction_id, id)` order. Only an append inside an older, still open
            // transaction (`append_in`) can fail that; `append_events` reports it as a
            // conflict.
            //
            // A deleted stream's head is its tombstone (`gone`): no row back, and
            // `append_events` reports `StreamDeleted`. The check reads a column of the
            // head row the statement fetches anyway: no extra lookup.
            append_fast: sql(format!(
                "WITH head AS (SELECT coalesce(h.version, 0) AS v, \
                 coalesce(h.transaction_id, 0) AS tx, \
                 coalesce(h.event_type = '{STREAM_DELETED}', false) AS gone \
                 FROM (SELECT) AS one \
                 LEFT JOIN LATERAL (SELECT e.version, e.transaction_id, e.event_type \
                 FROM {s}.events e \
                 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 \
                 ORDER BY e.version DESC LIMIT 1) h ON true), \
                 inserted AS (INSERT INTO {s}.events (transaction_id, event_id, \
                 aggregate_type, aggregate_id, version, event_type, schema_version, payload, \
                 metadata, checksum) \
                 SELECT pg_current_xact_id()::text::bigint, b.event_id, $1, $2, head.v + b.ord, \
                 b.event_type, b.schema_version, b.payload, b.metadata::json, b.checksum \
                 FROM head, unnest($5::uuid[], $6::text[], $7::bigint[], $8::bytea[], \
                 $9::text[], $10::integer[]) WITH ORDINALITY \
                 AS b(event_id, event_type, schema_version, payload, metadata, checksum, ord) \
                 WHERE ($3::smallint = 0 OR ($3 = 1 AND head.v = 0) \
                 OR ($3 = 2 AND head.v > 0) OR ($3 = 3 AND head.v = $4::bigint)) \
                 AND head.tx <= pg_current_xact_id()::text::bigint AND NOT head.gone \
                 ORDER BY b.ord \
                 RETURNING id, version, transaction_id) \
                 SELECT 0::smallint, max(i.version), max(i.transaction_id), max(i.id), \
                 NULL::uuid, NULL::text, NULL::text FROM inserted i HAVING count(*) > 0"
            )),
            // Group commit (ADR 0027): the appends of many callers, each to another
            // stream, in one statement. `$1`-`$4` have one element per append (stream
            // type, stream id, expected kind and version as in `append_fast`); `$5`-`$12`
            // one per event: the append it belongs to (1-based), its place in that
            // append (1-based), then the columns. Each append's head and expected-version
            // check are those of `append_fast`; only the appends whose check passes are
            // inserted. One row back per append: its number, then the last version,
            // transaction id and log id it wrote, all NULL when its check failed (the
            // caller then sorts it out alone). A stored id or a lost race is a unique
            // violation that fails the whole statement. An append to a deleted stream
            // fails its check (`gone`), so only its caller goes alone and gets
            // `StreamDeleted` from `append_events`.
            append_many: sql(format!(
                "WITH req AS MATERIALIZED (SELECT r.n, r.t, r.i, r.kind, r.exp, \
                 coalesce(h.version, 0) AS v, coalesce(h.transaction_id, 0) AS tx, \
                 coalesce(h.event_type = '{STREAM_DELETED}', false) AS gone \
                 FROM unnest($1::text[], $2::text[], $3::smallint[], $4::bigint[]) \
                 WITH ORDINALITY AS r(t, i, kind, exp, n) \
                 LEFT JOIN LATERAL (SELECT e.version, e.transaction_id, e.event_type \
                 FROM {s}.events e \
                 WHERE e.aggregate_type = r.t AND e.aggregate_id = r.i \
                 ORDER BY e.version DESC LIMIT 1) h ON true), \
                 ok AS (SELECT req.n, req.t, req.i, req.v FROM req \
                 WHERE (req.kind = 0 OR (req.kind = 1 AND req.v = 0) \
                 OR (req.kind = 2 AND req.v > 0) OR (req.kind = 3 AND req.v = req.exp)) \
                 AND req.tx <= pg_current_xact_id()::text::bigint AND NOT req.gone), \
                 inserted AS (INSERT INTO {s}.events (transaction_id, event_id, \
                 aggregate_type, aggregate_id, version, event_type, schema_version, payload, \
                 metadata, checksum) \
                 SELECT pg_current_xact_id()::text::bigint, b.event_id, ok.t, ok.i, \
                 ok.v + b.ord, b.event_type, b.schema_version, b.payload, b.metadata::json, \
                 b.checksum \
                 FROM unnest($5::bigint[], $6::bigint[], $7::uuid[], $8::text[], \
                 $9::bigint[], $10::bytea[], $11::text[], $12::integer[]) WITH ORDINALITY \
                 AS b(n, ord, event_id, event_type, schema_version, payload, metadata, \
                 checksum, k) \
                 JOIN ok ON ok.n = b.n \
                 ORDER BY b.k \
                 RETURNING aggregate_type, aggregate_id, version, transaction_id, id) \
                 SELECT req.n, w.version, w.tx, w.id FROM req LEFT JOIN \
                 (SELECT i.aggregate_type, i.aggregate_id, max(i.version) AS version, \
                 max(i.transaction_id) AS tx, max(i.id) AS id FROM inserted i \
                 GROUP BY i.aggregate_type, i.aggregate_id) w \
                 ON w.aggregate_type = req.t AND w.aggregate_id = req.i ORDER BY req.n"
            )),
            read_stream: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events e \
                 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.version >= $3 \
                 ORDER BY e.version"
            )),
            // One round trip for a load: the snapshot row (if any) joined to each event
            // from the snapshot's version on, in one statement (one MVCC snapshot: the
            // two agree). The event at the snapshot's own version comes first and shows
            // that the snapshot is not ahead of the stream; it is not applied. Columns 12
            // to 15 are the snapshot's version, schema version, payload and checksum; the payload
            // is sent once, on the first row, and only when that row is the event at the
            // snapshot's version. The outer side is one row, so the nested loop returns
            // the events in the inner `ORDER BY`.
            read_from_snapshot: sql(format!(
                "SELECT ev.*, s.version, s.schema_version, \
                 CASE WHEN ev.version = s.version THEN s.payload END, s.checksum \
                 FROM (SELECT) AS one \
                 LEFT JOIN {s}.snapshots s ON s.aggregate_type = $1 AND s.aggregate_id = $2 \
                 LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM {s}.events e \
                 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 \
                 AND e.version >= coalesce(s.version, 1) ORDER BY e.version) ev ON true"
            )),
            // `$3` is a horizon from `horizon`: every transaction below it has ended.
            read_all: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events e \
                 WHERE (e.transaction_id, e.id) > ($1, $2) AND e.transaction_id < $3 \
                 ORDER BY e.transaction_id, e.id LIMIT $4"
            )),
            // The same, with the records of other types left in the table (`$5`: the
            // types, a `text[]`).
            read_all_of_types: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events e \
                 WHERE (e.transaction_id, e.id) > ($1, $2) AND e.transaction_id < $3 \
                 AND e.event_type = ANY($5) \
                 ORDER BY e.transaction_id, e.id LIMIT $4"
            )),
            horizon: sql(format!(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
                 (SELECT max(transaction_id) FROM {s}.events)"
            )),
            horizon_now: sql("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint".into()),
            // The same, with the position of the last event below the horizon (columns 2
            // and 3; 1 and 2 in the `_now` form): one backward probe of the log index.
            horizon_last: sql(format!(
                "SELECT h.x, (SELECT max(transaction_id) FROM {s}.events), l.transaction_id, l.id \
                 FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS x) h \
                 LEFT JOIN LATERAL (SELECT e.transaction_id, e.id FROM {s}.events e \
                 WHERE e.transaction_id < h.x ORDER BY e.transaction_id DESC, e.id DESC LIMIT 1) l \
                 ON true"
            )),
            horizon_last_now: sql(format!(
                "SELECT h.x, l.transaction_id, l.id \
                 FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS x) h \
                 LEFT JOIN LATERAL (SELECT e.transaction_id, e.id FROM {s}.events e \
                 WHERE e.transaction_id < h.x ORDER BY e.transaction_id DESC, e.id DESC LIMIT 1) l \
                 ON true"
            )),
            count_events: sql(format!(
                "SELECT count(*) FROM {s}.events e \
                 WHERE (e.transaction_id, e.id) > ($1, $2) AND e.transaction_id < $3"
            )),
            count_events_of_types: sql(format!(
                "SELECT count(*) FROM {s}.events e \
                 WHERE (e.transaction_id, e.id) > ($1, $2) AND e.transaction_id < $3 \
                 AND e.event_type = ANY($4)"
            )),
            find_event: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events e \
                 WHERE e.event_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3"
            )),
            events_of_transaction: sql(format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events e \
                 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.version > $3 \
                 AND e.version <= $4 ORDER BY e.version"
            )),
            stream_version: sql(format!(
                "SELECT coalesce((SELECT version FROM {s}.events \
                 WHERE aggregate_type = $1 AND aggregate_id = $2 \
                 ORDER BY version DESC LIMIT 1), 0)"
            )),
            list_streams: sql(format!(
                "SELECT aggregate_type, aggregate_id, max(version) FROM {s}.events \
                 GROUP BY aggregate_type, aggregate_id"
            )),
            stats: sql(format!(
                "SELECT (SELECT count(*) FROM (SELECT DISTINCT aggregate_type, aggregate_id \
                 FROM {s}.events) d), (SELECT count(*) FROM {s}.events), \
                 (SELECT count(*) FROM {s}.snapshots)"
            )),
            load_snapshot: sql(format!(
                "SELECT version, schema_version, payload, checksum FROM {s}.snapshots \
                 WHERE aggregate_type = $1 AND aggregate_id = $2"
            )),
            // Not for a deleted stream (its last row is the tombstone): a late snapshot
            // must not bring data back. Run after `lock_for_snapshot`, so a delete in
            // flight has committed (or not started) when this statement looks.
            save_snapshot: sql(format!(
                "INSERT INTO {s}.snapshots AS t \
                 (aggregate_type, aggregate_id, version, schema_version, payload, checksum) \
                 SELECT $1, $2, $3, $4, $5, $6 \
                 WHERE (SELECT h.event_type FROM {s}.events h \
                 WHERE h.aggregate_type = $1 AND h.aggregate_id = $2 \
                 ORDER BY h.version DESC LIMIT 1) IS DISTINCT FROM '{STREAM_DELETED}' \
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                 SET version = EXCLUDED.version, schema_version = EXCLUDED.schema_version, \
                 payload = EXCLUDED.payload, checksum = EXCLUDED.checksum, taken_at = now() \
                 WHERE t.version <= EXCLUDED.version OR NOT EXISTS (SELECT 1 FROM {s}.events e \
                 WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.version = t.version)"
            )),
            // Waits for a delete or truncation in flight (they hold SHARE ROW EXCLUSIVE);
            // appends (ROW EXCLUSIVE too) do not wait for it.
            lock_for_snapshot: sql(format!("LOCK TABLE {s}.events IN ROW EXCLUSIVE MODE")),
            load_checkpoint: sql(format!(
                "SELECT commit_id, sequence FROM {s}.checkpoints WHERE name = $1"
            )),
            save_checkpoint: sql(format!(
                "INSERT INTO {s}.checkpoints (name, commit_id, sequence) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET commit_id = EXCLUDED.commit_id, \
                 sequence = EXCLUDED.sequence, updated_at = now()"
            )),
            // The same, with `synchronous_commit = off` for its own transaction (the
            // setting in force when the statement's implicit transaction commits).
            advance_checkpoint: sql(format!(
                "INSERT INTO {s}.checkpoints (name, commit_id, sequence) \
                 SELECT $1, $2, $3 FROM (SELECT set_config('synchronous_commit', 'off', true)) \
                 AS lazily \
                 ON CONFLICT (name) DO UPDATE SET commit_id = EXCLUDED.commit_id, \
                 sequence = EXCLUDED.sequence, updated_at = now()"
            )),
            // Creates the row at the start if it is missing, and locks it either way.
            lock_checkpoint: sql(format!(
                "INSERT INTO {s}.checkpoints AS t (name, commit_id, sequence) VALUES ($1, 0, 0) \
                 ON CONFLICT (name) DO UPDATE SET name = t.name \
                 RETURNING t.commit_id, t.sequence"
            )),
            lifecycle: LifecycleStatements::new(&s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advance is the save's upsert with the setting in a `FROM` (evaluated, unlike an
    /// unreferenced CTE), local to the statement's own transaction.
    #[test]
    fn the_advance_is_the_save_without_waiting_for_the_flush() {
        let sql = Statements::new(&Schema::new("s", false).unwrap());
        let (save, advance) = (&*sql.save_checkpoint, &*sql.advance_checkpoint);
        assert!(
            advance.contains("FROM (SELECT set_config('synchronous_commit', 'off', true))"),
            "{advance}"
        );
        assert!(!save.contains("synchronous_commit"), "{save}");
        let tail = |s: &str| s[s.find("ON CONFLICT").unwrap()..].to_owned();
        assert_eq!(tail(save), tail(advance));
    }

    #[test]
    fn accepts_plain_lower_case_identifiers() {
        for name in ["events", "_x", "cqrs_test_01", &"a".repeat(63)] {
            assert!(Schema::new(name, false).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_anything_that_would_need_escaping() {
        for name in [
            "",
            "Events",
            "1abc",
            "a-b",
            "a\"b",
            "a;drop",
            "a b",
            "é",
            "pg_catalog",
            "pg_toast",
            "information_schema",
            "public",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(Schema::new(name, false), Err(Error::InvalidSchema { .. })),
                "{name:?}"
            );
        }
        assert!(Schema::new("public", true).is_ok());
        let err = Schema::new("public", false).unwrap_err().to_string();
        assert!(err.contains("allow_public_schema"), "{err}");
    }
}
