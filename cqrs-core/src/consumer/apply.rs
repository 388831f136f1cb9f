//! Applying messages in the inbox's transactions, and dead-lettering what fails.

use std::time::SystemTime;

use super::{BatchError, Consumer, Item, Outcome, Parsed, chain};
use crate::consume::{DeadLetter, Inbox, StreamState};
use crate::{BoxError, Codec, Envelope, Projection, RecordedEvent};

/// An item to dead-letter, with the reason and the attempts made.
pub(super) type Letter<'a, D, E> = (&'a Item<D, E>, &'a str, u32);

impl<I: Inbox, P: Projection<I::Context>, C: Codec> Consumer<I, P, C> {
    /// The outcome of each item: the batch in one transaction; if the projection fails
    /// on one, the items one by one, each with its attempts.
    pub(super) async fn apply_all<D>(&mut self, items: &[Item<D, P::Event>]) -> Vec<Outcome> {
        let mut failures = 0u32;
        loop {
            match self.apply_batch(items).await {
                Ok(outcomes) => return outcomes,
                Err(BatchError::Inbox(error)) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(consumer = %self.name(), %error,
                        "the inbox's database failed; retrying");
                    tokio::time::sleep(self.config.backoff.delay(failures)).await;
                }
                Err(BatchError::Apply { .. }) if items.len() > 1 => break,
                Err(BatchError::Apply { source }) => {
                    return vec![self.apply_with_attempts(&items[0], source).await];
                }
            }
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let one = std::slice::from_ref(item);
            let outcome = loop {
                match self.apply_batch(one).await {
                    Ok(o) => break o[0],
                    Err(BatchError::Inbox(error)) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(consumer = %self.name(), %error,
                            "the inbox's database failed; retrying");
                        tokio::time::sleep(self.config.backoff.delay(failures)).await;
                    }
                    Err(BatchError::Apply { source }) => {
                        break self.apply_with_attempts(item, source).await;
                    }
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Retries one item the projection failed on (once already, with `first`); after
    /// the configured attempts, dead-letters it and parks its stream.
    async fn apply_with_attempts<D>(
        &mut self,
        item: &Item<D, P::Event>,
        first: BoxError,
    ) -> Outcome {
        let mut attempts = 1u32;
        let mut last = first;
        while attempts < self.config.attempts {
            tracing::warn!(consumer = %self.name(), error = %last, attempts,
                "the projection failed; retrying");
            tokio::time::sleep(self.config.backoff.delay(attempts)).await;
            attempts += 1;
            match self.apply_batch(std::slice::from_ref(item)).await {
                Ok(outcomes) => return outcomes[0],
                Err(BatchError::Apply { source }) => last = source,
                // The database, not the event: this attempt does not count.
                Err(BatchError::Inbox(error)) => {
                    attempts -= 1;
                    last = error;
                }
            }
        }
        let reason = format!("the projection failed: {}", chain(&*last));
        tracing::error!(consumer = %self.name(), %reason, attempts, "event dead-lettered");
        let letter = [(item, reason.as_str(), attempts)];
        until_ok!(self, self.bury(&letter).await);
        Outcome::DeadLettered
    }

    /// In one transaction: dead-letters each item with its reason and attempts, and
    /// parks its stream.
    pub(super) async fn bury<D>(
        &mut self,
        letters: &[Letter<'_, D, P::Event>],
    ) -> Result<(), BoxError> {
        let mut tx = self.inbox.begin().await?;
        for (item, reason, attempts) in letters {
            self.add_letter(&mut tx, item, reason, *attempts).await?;
        }
        self.inbox.commit(tx).await
    }

    async fn add_letter<D>(
        &mut self,
        tx: &mut I::Tx,
        item: &Item<D, P::Event>,
        reason: &str,
        attempts: u32,
    ) -> Result<(), BoxError> {
        let record = item.parsed.record();
        let letter = DeadLetter {
            id: 0,
            message: item.message.clone(),
            event_id: record.map(|r| r.event_id),
            stream: record.map(|r| r.stream.clone()),
            version: record.map(|r| r.version),
            reason: reason.to_owned(),
            attempts,
            dead_at: SystemTime::now(),
        };
        self.inbox.add_dead_letter(tx, &letter).await?;
        if let Some(record) = record {
            let mut state = self.inbox.stream_state(tx, &record.stream).await?;
            state.parked = true;
            self.inbox
                .set_stream_state(tx, &record.stream, state)
                .await?;
        }
        Ok(())
    }

    /// Applies `items` in one transaction and returns the outcome of each.
    pub(super) async fn apply_batch<D>(
        &mut self,
        items: &[Item<D, P::Event>],
    ) -> Result<Vec<Outcome>, BatchError> {
        let mut tx = self.inbox.begin().await.map_err(BatchError::Inbox)?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let outcome = match &item.parsed {
                Parsed::Foreign { reason } | Parsed::Undecodable { reason, .. } => {
                    self.add_letter(&mut tx, item, reason, 0)
                        .await
                        .map_err(BatchError::Inbox)?;
                    Outcome::DeadLettered
                }
                Parsed::Event { record, envelope } => {
                    let state = self
                        .inbox
                        .stream_state(&mut tx, &record.stream)
                        .await
                        .map_err(BatchError::Inbox)?;
                    self.decide(&mut tx, item, record, envelope.as_ref(), state)
                        .await?
                }
            };
            outcomes.push(outcome);
        }
        self.inbox.commit(tx).await.map_err(BatchError::Inbox)?;
        Ok(outcomes)
    }

    /// What to do with an event, given its stream's state, in the open transaction.
    async fn decide<D>(
        &mut self,
        tx: &mut I::Tx,
        item: &Item<D, P::Event>,
        record: &RecordedEvent,
        envelope: Option<&Envelope<P::Event>>,
        state: StreamState,
    ) -> Result<Outcome, BatchError> {
        if record.version <= state.version {
            return Ok(Outcome::Duplicate);
        }
        if state.parked {
            let reason = format!(
                "{} is parked behind an earlier dead letter (last applied version {})",
                record.stream, state.version
            );
            self.add_letter(tx, item, &reason, 0)
                .await
                .map_err(BatchError::Inbox)?;
            return Ok(Outcome::DeadLettered);
        }
        let first_seen = state.version == 0 && self.config.start_mid_stream;
        if record.version > state.version + 1 && !first_seen {
            return Ok(Outcome::Gap {
                expected: state.version + 1,
            });
        }
        if let Some(envelope) = envelope {
            let cx = I::context(tx);
            self.projection
                .apply(cx, std::slice::from_ref(envelope))
                .await
                .map_err(|source| BatchError::Apply { source })?;
        }
        let next = StreamState {
            version: record.version,
            parked: false,
        };
        self.inbox
            .set_stream_state(tx, &record.stream, next)
            .await
            .map_err(BatchError::Inbox)?;
        Ok(match envelope {
            Some(_) => Outcome::Applied,
            None => Outcome::Skipped,
        })
    }
}
