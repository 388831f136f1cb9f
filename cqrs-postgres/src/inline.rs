//! Inline projections: a read model updated in the append's own transaction.

use std::fmt;

use cqrs_core::{BoxError, Codec, Envelope, Projection, RecordedEvent};
use futures::future::BoxFuture;
use sqlx::PgConnection;

/// An inline projection with its type erased, as the store keeps it: it gets the records
/// one append wrote, inside the append's transaction.
pub(crate) trait InlineProjection: Send + Sync + 'static {
    /// The projection's name (in errors).
    fn name(&self) -> &str;

    /// Upcasts, filters and decodes the records, and applies them.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        records: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// A typed [`Projection<PgConnection>`](Projection) run inline, with the codec that
/// decodes its events.
pub(crate) struct Inline<P, C> {
    projection: P,
    codec: C,
}

impl<P, C> Inline<P, C> {
    pub(crate) fn new(projection: P, codec: C) -> Self {
        Inline { projection, codec }
    }
}

impl<P: Projection<PgConnection>, C> fmt::Debug for Inline<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inline")
            .field("projection", &self.projection.name())
            .finish_non_exhaustive()
    }
}

impl<P, C> InlineProjection for Inline<P, C>
where
    P: Projection<PgConnection> + Clone + Sync,
    C: Codec,
{
    fn name(&self) -> &str {
        self.projection.name()
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        records: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let mut batch: Vec<Envelope<P::Event>> = Vec::with_capacity(records.len());
            for record in records {
                let record = self.codec.upcast(record.clone())?;
                if cqrs_core::projection_takes(&self.projection, &record) {
                    batch.push(self.codec.decode_upcast_envelope(record)?);
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            // Appends run concurrently: each applies its own copy of the projection.
            self.projection.clone().apply(conn, &batch).await
        })
    }
}

impl crate::PostgresEventStore {
    /// Runs every inline projection over `records`, in the transaction that writes them
    /// (an append's events, a delete's tombstone); the first refusal fails it.
    pub(crate) async fn run_inline(
        &self,
        conn: &mut PgConnection,
        records: &[RecordedEvent],
    ) -> cqrs_core::Result<()> {
        for projection in &self.inner.inline {
            projection
                .apply(&mut *conn, records)
                .await
                .map_err(|source| {
                    cqrs_core::Error::store(crate::Error::InlineProjection {
                        projection: projection.name().to_owned(),
                        source,
                    })
                })?;
        }
        Ok(())
    }
}
