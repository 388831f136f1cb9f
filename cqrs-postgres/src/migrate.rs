//! Embedded migrations, applied in order by [`PostgresEventStore::migrate`].
//!
//! Each migration is plain SQL run in one transaction together with the row that records
//! it in the schema's `schema_migrations` table; a transaction-level advisory lock keyed
//! on the schema makes concurrent `migrate()` calls (many nodes starting at once) wait
//! for each other instead of racing.
//!
//! [`PostgresEventStore::migrate`]: crate::PostgresEventStore::migrate

use sqlx::{AssertSqlSafe, Connection, PgPool};

use cqrs_core::STREAM_DELETED;

use crate::error::{Error, Result};
use crate::schema::Schema;

/// One migration: its version, a name, and its SQL for a schema.
struct Migration {
    version: i64,
    name: &'static str,
    sql: fn(&str) -> String,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events, snapshots, checkpoints, append_events()",
        sql: v1_initial,
    },
    Migration {
        version: 2,
        name: "record checksums",
        sql: v2_checksums,
    },
    Migration {
        version: 3,
        name: "consumer inboxes: stream states and dead letters",
        sql: v3_inbox,
    },
    Migration {
        version: 4,
        name: "subject keys for crypto-shredding",
        sql: v4_subject_keys,
    },
    Migration {
        version: 5,
        name: "append_events() refuses deleted streams",
        sql: v5_tombstones,
    },
];

/// The latest migration this release knows.
pub(crate) const LATEST: i64 = 5;

/// The advisory-lock key of a schema's migrations (and nothing else).
pub(crate) fn lock_key(schema: &Schema, purpose: &str) -> i64 {
    // FNV-1a, stable across processes and releases: every node computes the same key.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in purpose
        .bytes()
        .chain([0])
        .chain(schema.name().bytes())
        .chain([0])
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_be_bytes(hash.to_be_bytes())
}

/// Keyed on the projection name too: see [`crate::worker`].
pub(crate) fn named_lock_key(schema: &Schema, purpose: &str, name: &str) -> i64 {
    let mut hash = u64::from_be_bytes(lock_key(schema, purpose).to_be_bytes());
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_be_bytes(hash.to_be_bytes())
}

pub(crate) async fn run(pool: &PgPool, schema: &Schema) -> Result<i64> {
    let s = schema.quoted();
    let database = |operation| move |source| Error::Database { operation, source };
    let mut conn = pool
        .acquire()
        .await
        .map_err(|source| Error::Connect { source })?;
    let mut applied_to = 0;
    // Each migration in its own transaction, so a failure leaves the schema at a known
    // version.
    loop {
        let mut tx = conn
            .begin()
            .await
            .map_err(database("beginning a migration"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(schema, "migrate"))
            .execute(&mut *tx)
            .await
            .map_err(database("locking the schema for migration"))?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; \
             CREATE TABLE IF NOT EXISTS {s}.schema_migrations (\
                version bigint PRIMARY KEY, name text NOT NULL, \
                applied_at timestamptz NOT NULL DEFAULT now())"
        )))
        .execute(&mut *tx)
        .await
        .map_err(database("creating the schema"))?;
        let current: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"
        )))
        .fetch_one(&mut *tx)
        .await
        .map_err(database("reading the schema version"))?;
        if current > LATEST {
            return Err(Error::SchemaTooNew {
                schema: schema.name().to_owned(),
                found: current,
                known: LATEST,
            });
        }
        let Some(next) = MIGRATIONS.iter().find(|m| m.version > current) else {
            tx.commit()
                .await
                .map_err(database("committing the schema"))?;
            return Ok(applied_to.max(current));
        };
        let failed = |source| Error::Migrate {
            schema: schema.name().to_owned(),
            version: next.version,
            name: next.name,
            source,
        };
        sqlx::raw_sql(AssertSqlSafe((next.sql)(&s)))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {s}.schema_migrations (version, name) VALUES ($1, $2)"
        )))
        .bind(next.version)
        .bind(next.name)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        applied_to = next.version;
        tracing::info!(schema = %schema, version = next.version, name = next.name, "migrated");
    }
}

/// The first schema. `s` is the quoted schema name.
///
/// - `events.transaction_id` is the writer's `pg_current_xact_id()` (as bigint): the log is
///   read in `(transaction_id, id)` order below the oldest running transaction, which
///   makes the order gap-safe (ADR 0001 in this crate's `docs/`).
/// - `metadata` is `json`, not `jsonb`: it keeps the text as written, `\u0000` included,
///   so every metadata value round-trips.
/// - `append_events` does the whole append (idempotency, expected version, insert,
///   notification) in one call. The store's hot path is a plain statement
///   (`Statements::append_fast`); the function takes the cases that statement leaves:
///   a version mismatch, a unique violation, an append inside a caller's transaction.
fn v1_initial(s: &str) -> String {
    let append_events = append_events(s, false, false);
    format!(
        r#"
CREATE TABLE {s}.events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  bigint NOT NULL,
    event_id        uuid NOT NULL,
    aggregate_type  text NOT NULL,
    aggregate_id    text NOT NULL,
    version         bigint NOT NULL CHECK (version > 0),
    event_type      text NOT NULL,
    schema_version  bigint NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    payload         bytea NOT NULL,
    metadata        json NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (aggregate_type, aggregate_id, version)
);
CREATE INDEX events_log_idx ON {s}.events (transaction_id, id);

CREATE TABLE {s}.snapshots (
    aggregate_type  text NOT NULL,
    aggregate_id    text NOT NULL,
    version         bigint NOT NULL,
    schema_version  bigint NOT NULL,
    payload         bytea NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE {s}.checkpoints (
    name        text PRIMARY KEY,
    commit_id   bigint NOT NULL,
    sequence    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

{append_events}"#
    )
}

/// The `append_events` function (see [`v1_initial`]); with `checksums` (migration 2) it
/// takes the records' checksums too, after `p_metadata`; with `tombstones` (migration 5)
/// it refuses an append to a deleted stream (outcome 4) and replaces the function in
/// place (same signature and result columns).
fn append_events(s: &str, checksums: bool, tombstones: bool) -> String {
    let (checksum_param, checksum_column, checksum_value, checksum_array, checksum_column_b) =
        if checksums {
            (
                " p_checksums integer[],",
                ", checksum",
                ", b.checksum",
                ", p_checksums",
                ", checksum",
            )
        } else {
            ("", "", "", "", "")
        };
    // Migration 5: the head's event type, and outcome 4 when it is a tombstone.
    let (create, declare, lock, head_type, head_into, deleted) = if tombstones {
        (
            "CREATE OR REPLACE FUNCTION",
            "\n    v_head_type text;",
            format!(
                r#"
    -- The insert's lock, taken before the head is read: a delete or truncation
    -- (`crate::lifecycle`) locks the table against it, so it cannot run between this
    -- function's read of the head and its insert (each statement here reads its own
    -- snapshot); the head read below sees any that committed before.
    LOCK TABLE {s}.events IN ROW EXCLUSIVE MODE;"#
            ),
            ", e.event_type",
            ", v_head_type",
            format!(
                r#";
    -- A deleted stream ends with its tombstone: nothing goes after it, whatever the
    -- expected version or the ids (an idempotent re-append of removed events included).
    IF v_head_type = '{STREAM_DELETED}' THEN
        RETURN QUERY SELECT 4::smallint, v_actual, NULL::bigint, NULL::bigint,
                            NULL::uuid, NULL::text, NULL::text;
        RETURN;
    END IF"#
            ),
        )
    } else {
        ("CREATE FUNCTION", "", String::new(), "", "", String::new())
    };
    format!(
        r#"-- Outcome 0: appended: r_version, r_commit, r_sequence of the last event.
-- Outcome 3: every id already appended (idempotent): the same, of the original append.
-- Outcome 1: version conflict: r_version is the stream's version.
-- Outcome 2: an event id is used in another stream: r_event_id, r_type, r_id.
-- Outcome 4 (from migration 5): the stream is deleted: r_version is its tombstone's.
-- p_expected_kind: 0 any, 1 no stream, 2 stream exists, 3 exactly p_expected.
--
-- The hot path (new ids, right version) does not look the ids up: the unique index on
-- event_id refuses a stored one, and the caller then calls again with p_check_ids, which
-- gives the idempotent result, the conflict or the duplicate-id error. A version
-- mismatch always checks the ids first: a full re-append succeeds whatever the version.
{create} {s}.append_events(
    p_type text, p_id text, p_expected_kind smallint, p_expected bigint,
    p_event_ids uuid[], p_event_types text[], p_schema_versions bigint[],
    p_payloads bytea[], p_metadata text[],{checksum_param} p_notify text, p_check_ids boolean)
RETURNS TABLE (r_outcome smallint, r_version bigint, r_commit bigint, r_sequence bigint,
               r_event_id uuid, r_type text, r_id text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_n integer := cardinality(p_event_ids);
    v_found integer;
    v_actual bigint;
    v_matches boolean;
    v_xid bigint;
    v_head_xid bigint;
    v_version bigint;
    v_last bigint;{declare}
BEGIN{lock}
    -- The stream's head by a backward index scan: O(log n) whatever the table's
    -- statistics say (a plain max() was planned as a scan of the whole stream).
    SELECT e.version, e.transaction_id{head_type} INTO v_actual, v_head_xid{head_into} FROM {s}.events e
        WHERE e.aggregate_type = p_type AND e.aggregate_id = p_id
        ORDER BY e.version DESC LIMIT 1;
    v_actual := coalesce(v_actual, 0){deleted};
    v_head_xid := coalesce(v_head_xid, 0);
    v_matches := p_expected_kind = 0
        OR (p_expected_kind = 1 AND v_actual = 0)
        OR (p_expected_kind = 2 AND v_actual > 0)
        OR (p_expected_kind = 3 AND v_actual = p_expected);

    IF p_check_ids OR NOT v_matches THEN
        SELECT count(*) INTO v_found FROM {s}.events e WHERE e.event_id = ANY (p_event_ids);
        IF v_found > 0 THEN
            -- The first id of the batch that another stream holds.
            RETURN QUERY
                SELECT 2::smallint, NULL::bigint, NULL::bigint, NULL::bigint,
                       e.event_id, e.aggregate_type, e.aggregate_id
                FROM unnest(p_event_ids) WITH ORDINALITY AS b(event_id, ord)
                JOIN {s}.events e ON e.event_id = b.event_id
                WHERE e.aggregate_type <> p_type OR e.aggregate_id <> p_id
                ORDER BY b.ord LIMIT 1;
            IF FOUND THEN
                RETURN;
            END IF;
            -- Every id stored, at consecutive versions in batch order: the original result.
            IF v_found = v_n AND NOT EXISTS (
                SELECT 1
                FROM unnest(p_event_ids) WITH ORDINALITY AS b(event_id, ord)
                JOIN {s}.events e ON e.event_id = b.event_id
                JOIN {s}.events f ON f.event_id = p_event_ids[1]
                WHERE e.version <> f.version + b.ord - 1)
            THEN
                RETURN QUERY
                    SELECT 3::smallint, e.version, e.transaction_id, e.id,
                           NULL::uuid, NULL::text, NULL::text
                    FROM {s}.events e WHERE e.event_id = p_event_ids[v_n];
                RETURN;
            END IF;
            -- Some ids stored, not all: a conflict whatever the version.
            v_matches := false;
        END IF;
    END IF;

    IF NOT v_matches THEN
        RETURN QUERY SELECT 1::smallint, v_actual, NULL::bigint, NULL::bigint,
                            NULL::uuid, NULL::text, NULL::text;
        RETURN;
    END IF;

    -- The log is read in (transaction_id, id) order: an event of this transaction must
    -- not sort before the stream's last event. That happens only when this transaction
    -- took its id before the head's writer did and appends after it committed (an
    -- append_in inside an older transaction). Refuse it as a conflict: the caller's
    -- retry runs in a new transaction, with a newer id. ADR 0009.
    v_xid := pg_current_xact_id()::text::bigint;
    IF v_head_xid > v_xid THEN
        RETURN QUERY SELECT 1::smallint, v_actual, NULL::bigint, NULL::bigint,
                            NULL::uuid, NULL::text, NULL::text;
        RETURN;
    END IF;

    -- A concurrent append of the same version or id fails here on a unique index: the
    -- caller sees a unique violation and calls again with p_check_ids (then gets the
    -- conflict, the idempotent result or the duplicate-id error).
    WITH inserted AS (
        INSERT INTO {s}.events (transaction_id, event_id, aggregate_type, aggregate_id,
                                version, event_type, schema_version, payload, metadata{checksum_column})
        SELECT v_xid, b.event_id, p_type, p_id, v_actual + b.ord, b.event_type,
               b.schema_version, b.payload, b.metadata::json{checksum_value}
        FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_payloads, p_metadata{checksum_array})
             WITH ORDINALITY AS b(event_id, event_type, schema_version, payload, metadata{checksum_column_b}, ord)
        ORDER BY b.ord
        RETURNING {s}.events.id, {s}.events.version)
    SELECT max(i.version), max(i.id) INTO v_version, v_last FROM inserted i;
    IF p_notify IS NOT NULL THEN
        PERFORM pg_notify(p_notify, '');
    END IF;
    RETURN QUERY SELECT 0::smallint, v_version, v_xid, v_last,
                        NULL::uuid, NULL::text, NULL::text;
END
$fn$;
"#
    )
}

/// Migration 2: a CRC32C per event and snapshot row (ADR 0015), written by the store and
/// verified on every read. Rows written before it have none and read unchecked.
/// What each consumer applied per stream of the publishing service, and its dead
/// letters (see `crate::PgInbox`).
/// The keys of data subjects (`crate::PostgresKeyStore`): a NULL key is a forgotten
/// subject, kept so that new personal data for it is refused.
fn v4_subject_keys(s: &str) -> String {
    format!(
        r#"
CREATE TABLE {s}.subject_keys (
    subject      text        PRIMARY KEY,
    key_bytes    bytea       CHECK (octet_length(key_bytes) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    forgotten_at timestamptz,
    CHECK ((key_bytes IS NULL) = (forgotten_at IS NOT NULL))
);"#
    )
}

/// Migration 5: `append_events` refuses appends to a deleted stream (outcome 4). A
/// deleted stream's last row is its tombstone (`cqrs_core::STREAM_DELETED`), which the
/// append already reads as the stream's head: the check costs no extra lookup. No table
/// changes, so existing databases upgrade in place; replacing the function is idempotent.
fn v5_tombstones(s: &str) -> String {
    append_events(s, true, true)
}

fn v3_inbox(s: &str) -> String {
    format!(
        r#"
CREATE TABLE {s}.consumer_streams (
    consumer    text    NOT NULL,
    stream_type text    NOT NULL,
    stream_id   text    NOT NULL,
    version     bigint  NOT NULL,
    parked      boolean NOT NULL,
    PRIMARY KEY (consumer, stream_type, stream_id)
);
CREATE TABLE {s}.dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    text        NOT NULL,
    subject     text        NOT NULL,
    headers     jsonb       NOT NULL,
    payload     bytea       NOT NULL,
    event_id    uuid,
    stream_type text,
    stream_id   text,
    version     bigint,
    reason      text        NOT NULL,
    attempts    integer     NOT NULL,
    dead_at     timestamptz NOT NULL
);
CREATE INDEX dead_letters_by_consumer ON {s}.dead_letters (consumer, id);"#
    )
}

fn v2_checksums(s: &str) -> String {
    let append_events = append_events(s, true, false);
    format!(
        r#"
ALTER TABLE {s}.events ADD COLUMN checksum integer;
ALTER TABLE {s}.snapshots ADD COLUMN checksum integer;
DROP FUNCTION {s}.append_events(text, text, smallint, bigint, uuid[], text[], bigint[],
    bytea[], text[], text, boolean);
{append_events}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text between `from` and `to` in `sql`.
    fn between<'a>(sql: &'a str, from: &str, to: &str) -> &'a str {
        let start = sql.find(from).map_or(0, |i| i + from.len());
        let end = sql[start..].find(to).map_or(sql.len(), |i| start + i);
        &sql[start..end]
    }

    /// Migration 5 replaces the function of migration 2 in place: `CREATE OR REPLACE`
    /// with the same parameters and result columns (PostgreSQL refuses a replacement
    /// that changes them), so a schema at version 4 upgrades without dropping anything.
    #[test]
    fn migration_5_replaces_append_events_with_the_same_signature() {
        // The function as migration 2 created it, and migration 5.
        let (v2, v5) = (append_events("\"s\"", true, false), v5_tombstones("\"s\""));
        assert!(v2_checksums("\"s\"").contains(&v2));
        assert!(v5.contains("CREATE OR REPLACE FUNCTION \"s\".append_events("));
        assert!(!v5.contains("DROP") && !v5.contains("ALTER"), "{v5}");
        for (from, to) in [("append_events(", "RETURNS"), ("RETURNS TABLE", "LANGUAGE")] {
            assert_eq!(between(&v2, from, to), between(&v5, from, to));
        }
        assert_eq!(LATEST, 5);
        assert!(MIGRATIONS.iter().map(|m| m.version).eq(1..=LATEST));
        // The function's first statement is the insert's lock (see `crate::lifecycle`).
        let body = between(&v5, "BEGIN", "SELECT");
        assert!(
            body.contains("LOCK TABLE \"s\".events IN ROW EXCLUSIVE MODE"),
            "{body}"
        );
    }
}
