//! Errors of the PostgreSQL backend that are not event-store operations: configuration,
//! connecting, migrating.
//!
//! The [`EventStore`](cqrs_core::EventStore) methods return [`cqrs_core::Error`]; a
//! database failure there is [`cqrs_core::Error::Store`] with the [`sqlx::Error`] as its
//! source.

/// The result type of this crate's own operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while configuring, connecting to or migrating a PostgreSQL event
/// store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The schema name is not a plain lower-case identifier.
    ///
    /// Handling: a configuration error; choose a name matching
    /// `^[a-z_][a-z0-9_]{0,62}$` that does not start with `pg_`.
    #[error("invalid schema name {name:?}: {reason}")]
    InvalidSchema {
        /// The refused name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// The database could not be reached.
    ///
    /// Handling: check the URL and that the server is up; retry later.
    #[error("cannot connect to PostgreSQL")]
    Connect {
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A migration failed; its transaction was rolled back, so the schema is at the
    /// version before it.
    ///
    /// Handling: read the source; fix the database (permissions, a conflicting object)
    /// and run [`migrate`](crate::PostgresEventStore::migrate) again.
    #[error("migration {version} ({name}) of schema {schema} failed")]
    Migrate {
        /// The schema being migrated.
        schema: String,
        /// The migration's version.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The schema was migrated by a newer release of this crate.
    ///
    /// Handling: upgrade this application; an older release cannot know what changed.
    #[error("schema {schema} is at migration {found}, newer than this release knows ({known})")]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// The version found in the schema.
        found: i64,
        /// The latest version this release knows.
        known: i64,
    },

    /// An inline projection failed, or an appended event it wants did not upcast or
    /// decode; the append it ran with was rolled back.
    ///
    /// Handling: fix the projection; nothing of the append was written. Appears as the
    /// source of [`cqrs_core::Error::Store`].
    #[error("inline projection {projection:?} failed")]
    InlineProjection {
        /// The projection's name.
        projection: String,
        /// The projection's error.
        #[source]
        source: cqrs_core::BoxError,
    },

    /// A transactional projection's checkpoint moved under it: another worker applied
    /// the batch (its lock was lost). This worker's transaction was rolled back, so
    /// nothing was applied twice.
    ///
    /// Handling: the worker reloads its checkpoint and goes on (the runner's retry does).
    #[error(
        "checkpoint of projection {projection:?} is at {found}, not at {expected} where this          worker left it: another worker is running it"
    )]
    CheckpointMoved {
        /// The projection's name.
        projection: String,
        /// Where this worker left the checkpoint.
        expected: cqrs_core::Position,
        /// Where it is.
        found: cqrs_core::Position,
    },

    /// A database operation outside the event-store trait failed (a worker lock, a
    /// projection transaction).
    ///
    /// Handling: retry later; the operation left nothing half done.
    #[error("database operation failed: {operation}")]
    Database {
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl From<Error> for cqrs_core::Error {
    fn from(error: Error) -> Self {
        cqrs_core::Error::store(error)
    }
}
