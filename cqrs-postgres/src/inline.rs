//! Inline projections: a read model updated in the append's own transaction.

use cqrs_core::{BoxError, RecordedEvent};
use futures::future::BoxFuture;
use sqlx::PgConnection;

/// A read model updated inside each append's own transaction: a read after the append
/// sees it (read-your-writes). Register it with
/// [`PostgresEventStoreBuilder::inline_projection`](crate::PostgresEventStoreBuilder::inline_projection).
///
/// It gets the appended records (payloads still encoded; decode them with the codec
/// you use, e.g. [`JsonCodec`](cqrs_core::JsonCodec)). An error rolls the append back.
/// Keep it small: it runs on the write path. It is called only for appends that wrote
/// something (not for idempotent re-appends), through [`EventLog::append`]; not by
/// [`PostgresEventStore::append_in`](crate::PostgresEventStore::append_in).
///
/// [`EventLog::append`]: cqrs_core::EventLog::append
///
/// # Examples
/// ```
/// use cqrs_core::{BoxError, RecordedEvent};
/// use cqrs_postgres::InlineProjection;
/// use futures::future::BoxFuture;
/// use sqlx::PgConnection;
///
/// /// Event counts per stream in `app.stream_sizes (stream text primary key, events bigint)`.
/// #[derive(Debug)]
/// struct StreamSizes;
///
/// impl InlineProjection for StreamSizes {
///     fn name(&self) -> &str {
///         "stream_sizes"
///     }
///
///     fn apply<'a>(
///         &'a self,
///         conn: &'a mut PgConnection,
///         events: &'a [RecordedEvent],
///     ) -> BoxFuture<'a, Result<(), BoxError>> {
///         Box::pin(async move {
///             let Some(last) = events.last() else { return Ok(()) };
///             sqlx::query(
///                 "INSERT INTO app.stream_sizes (stream, events) VALUES ($1, $2) \
///                  ON CONFLICT (stream) DO UPDATE SET events = EXCLUDED.events",
///             )
///             .bind(last.stream.to_string())
///             .bind(i64::try_from(last.version)?)
///             .execute(conn)
///             .await?;
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait InlineProjection: Send + Sync + 'static {
    /// The projection's name (in errors).
    fn name(&self) -> &str;

    /// Applies the records one append wrote, in version order, inside its transaction.
    ///
    /// # Errors
    /// Any error rolls the append back; `append` then returns
    /// [`cqrs_core::Error::Store`] with [`Error::InlineProjection`](crate::Error::InlineProjection)
    /// as its source.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}
