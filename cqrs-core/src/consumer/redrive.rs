//! Redriving dead letters: applying them again, in each stream's order.

use std::collections::BTreeMap;

use super::{Consumer, Item, Parsed, chain};
use crate::consume::{DeadLetter, Delivery, Inbox};
use crate::{BoxError, Codec, Projection, StreamId};

/// What a [redrive](Consumer::redrive) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Dead letters applied (or recorded as seen, for events the projection does not
    /// want) and removed.
    pub applied: u64,
    /// Dead letters removed because their event had been applied meanwhile (a
    /// redelivery that was dead-lettered behind its first copy).
    pub duplicates: u64,
    /// Dead letters left, each still failing or behind one that is.
    pub remaining: u64,
    /// Streams no longer parked.
    pub unparked: Vec<StreamId>,
    /// Why each stream (or message without a stream) still has dead letters.
    pub failures: Vec<String>,
}

/// A dead letter and what its message means.
type Redriven<E> = (DeadLetter, Item<Stored, E>);

/// How redriving one dead letter went.
enum Done {
    Applied,
    Duplicate,
    /// It still cannot be applied: why.
    Stuck(String),
}

/// No delivery: a dead letter is applied from its stored copy.
struct Stored;

impl Delivery for Stored {
    fn subject(&self) -> &str {
        ""
    }
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
    fn headers(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn payload(&self) -> &[u8] {
        &[]
    }
    async fn ack(&self) -> Result<(), crate::SubscribeError> {
        Ok(())
    }
}

impl<I: Inbox, P: Projection<I::Context>, C: Codec> Consumer<I, P, C> {
    /// Applies the dead letters again (those of `stream`, or all), for each stream in
    /// version order, as if they were delivered now: each one applied is removed in the
    /// transaction that applies it, and a stream whose letters are all gone is no longer
    /// parked. A stream stops at its first letter that still fails (the projection
    /// fails again after the configured attempts, the payload still does not decode,
    /// an earlier version is still missing); its later letters stay behind it.
    ///
    /// Run it in the process that runs the consumer (through
    /// [`ConsumerControl::redrive`](crate::ConsumerControl::redrive) while it runs), or,
    /// on a database several processes share, from any process.
    ///
    /// # Errors
    /// The inbox's error; what was redriven before it stays redriven.
    pub async fn redrive(&mut self, stream: Option<&StreamId>) -> Result<RedriveReport, BoxError> {
        let mut letters = Vec::new();
        let mut after = 0;
        loop {
            let page = self.inbox.dead_letters(after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            letters.extend(page);
        }
        let mut report = RedriveReport::default();
        let mut by_stream: BTreeMap<StreamId, Vec<Redriven<P::Event>>> = BTreeMap::new();
        for letter in letters {
            let item = self.item::<Stored>(letter.message.clone(), None);
            match item.parsed.record().map(|r| r.stream.clone()) {
                Some(of) if stream.is_none_or(|s| *s == of) => {
                    by_stream.entry(of).or_default().push((letter, item));
                }
                Some(_) => {}
                None if stream.is_none() => {
                    report.remaining += 1;
                    report
                        .failures
                        .push(format!("dead letter {}: {}", letter.id, letter.reason));
                }
                None => {}
            }
        }
        for (of, mut list) in by_stream {
            list.sort_by_key(|(letter, item)| {
                (item.parsed.record().map_or(0, |r| r.version), letter.id)
            });
            let count = list.len();
            let mut stuck = None;
            for (k, (letter, item)) in list.iter().enumerate() {
                if stuck.is_some() {
                    report.remaining += 1;
                    continue;
                }
                match self.redrive_one(letter, item, k + 1 == count).await? {
                    Done::Applied => report.applied += 1,
                    Done::Duplicate => report.duplicates += 1,
                    Done::Stuck(reason) => {
                        report.remaining += 1;
                        stuck = Some(reason);
                    }
                }
            }
            match stuck {
                Some(reason) => report.failures.push(format!("{of}: {reason}")),
                None => report.unparked.push(of),
            }
        }
        tracing::info!(consumer = %self.name(), applied = report.applied,
            remaining = report.remaining, "dead letters redriven");
        Ok(report)
    }

    /// Redrives one dead letter; `last`: it is its stream's last one.
    async fn redrive_one(
        &mut self,
        letter: &DeadLetter,
        item: &Item<Stored, P::Event>,
        last: bool,
    ) -> Result<Done, BoxError> {
        let (record, envelope) = match &item.parsed {
            Parsed::Foreign { reason } | Parsed::Undecodable { reason, .. } => {
                return Ok(Done::Stuck(format!("dead letter {}: {reason}", letter.id)));
            }
            Parsed::Event { record, envelope } => (record, envelope),
        };
        let mut attempts = 0u32;
        loop {
            let mut tx = self.inbox.begin().await?;
            let state = self.inbox.stream_state(&mut tx, &record.stream).await?;
            let duplicate = record.version <= state.version;
            if !duplicate && record.version > state.version + 1 {
                return Ok(Done::Stuck(format!(
                    "version {} is still missing (dead letter {} has version {})",
                    state.version + 1,
                    letter.id,
                    record.version
                )));
            }
            if let (false, Some(envelope)) = (duplicate, envelope) {
                let cx = I::context(&mut tx);
                if let Err(error) = self
                    .projection
                    .apply(cx, std::slice::from_ref(envelope))
                    .await
                {
                    drop(tx);
                    attempts += 1;
                    if attempts >= self.config.attempts {
                        return Ok(Done::Stuck(format!(
                            "dead letter {}: the projection failed again: {}",
                            letter.id,
                            chain(&*error)
                        )));
                    }
                    tokio::time::sleep(self.config.backoff.delay(attempts)).await;
                    continue;
                }
            }
            let mut next = state;
            next.version = next.version.max(record.version);
            next.parked = !last;
            self.inbox
                .set_stream_state(&mut tx, &record.stream, next)
                .await?;
            self.inbox.remove_dead_letter(&mut tx, letter.id).await?;
            self.inbox.commit(tx).await?;
            self.inbox.flush().await?;
            return Ok(if duplicate {
                Done::Duplicate
            } else {
                Done::Applied
            });
        }
    }
}
