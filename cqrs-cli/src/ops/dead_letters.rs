//! The consumers of a service: their dead letters, listed and redriven.

use cqrs_core::{
    BoxError, Codec, Consumer, ConsumerControl, DeadLetter, Inbox, InboxStats, Projection,
    RedriveReport, StreamId,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Operations, Report};
use crate::output::{payload_json, rfc3339};
use crate::{DeadLettersCommand, DeadLettersListArgs, Error, RedriveArgs, Result};

/// What the operations subcommand needs of a consumer: its dead letters, a redrive,
/// its inbox's counts. Implemented for [`ConsumerControl`] (a consumer running in this
/// process) and for a [`Consumer`] in a `tokio::sync::Mutex` (an operations process
/// working on a database the running consumer shares, such as PostgreSQL).
pub trait ConsumerOps: Send + Sync {
    /// Up to `limit` dead letters with ids above `after`, in id order.
    fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BoxError>>;

    /// Applies the dead letters again (of `stream`, or all).
    fn redrive(&self, stream: Option<StreamId>) -> BoxFuture<'_, Result<RedriveReport, BoxError>>;

    /// The inbox's counts.
    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, BoxError>>;
}

impl ConsumerOps for ConsumerControl {
    fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BoxError>> {
        Box::pin(ConsumerControl::dead_letters(self, after, limit))
    }

    fn redrive(&self, stream: Option<StreamId>) -> BoxFuture<'_, Result<RedriveReport, BoxError>> {
        Box::pin(ConsumerControl::redrive(self, stream))
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, BoxError>> {
        Box::pin(ConsumerControl::stats(self))
    }
}

impl<I, P, C> ConsumerOps for tokio::sync::Mutex<Consumer<I, P, C>>
where
    I: Inbox,
    P: Projection<I::Context>,
    C: Codec,
    Consumer<I, P, C>: Send,
{
    fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BoxError>> {
        Box::pin(async move {
            let mut consumer = self.lock().await;
            consumer.inbox_mut().dead_letters(after, limit).await
        })
    }

    fn redrive(&self, stream: Option<StreamId>) -> BoxFuture<'_, Result<RedriveReport, BoxError>> {
        Box::pin(async move { self.lock().await.redrive(stream.as_ref()).await })
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, BoxError>> {
        Box::pin(async move { self.lock().await.inbox_mut().stats().await })
    }
}

fn failed(consumer: &str) -> impl FnOnce(BoxError) -> Error + '_ {
    move |source| Error::Consumer {
        consumer: consumer.to_owned(),
        source,
    }
}

fn letter_json(letter: &DeadLetter) -> Value {
    json!({
        "id": letter.id,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "dead_at": rfc3339(letter.dead_at),
        "event_id": letter.event_id,
        "stream": letter.stream.as_ref().map(ToString::to_string),
        "version": letter.version,
        "subject": letter.message.subject,
        "headers": letter.message.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
        "payload": payload_json(&letter.message.payload),
    })
}

impl<S> Operations<S> {
    /// Registers a consumer of another service's events: `dead-letters` lists and
    /// redrives its dead letters, and `stats` shows its inbox's counts.
    pub fn consumer(
        mut self,
        name: impl Into<String>,
        consumer: impl ConsumerOps + 'static,
    ) -> Self {
        self.consumers.push((name.into(), Box::new(consumer)));
        self
    }

    /// The registered consumers `only` names (all when `None`).
    fn consumers_named(&self, only: Option<&str>) -> Result<Vec<&(String, Box<dyn ConsumerOps>)>> {
        let chosen: Vec<_> = self
            .consumers
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name))
            .collect();
        match (only, chosen.is_empty()) {
            (Some(name), true) => Err(Error::Usage(format!("no consumer named {name:?}"))),
            (None, true) => Err(Error::Usage("this service has no consumer".to_owned())),
            _ => Ok(chosen),
        }
    }

    pub(super) async fn dead_letters(&self, command: &DeadLettersCommand) -> Result<Report> {
        match command {
            DeadLettersCommand::List(args) => self.list_dead_letters(args).await,
            DeadLettersCommand::Redrive(args) => self.redrive(args).await,
        }
    }

    async fn list_dead_letters(&self, args: &DeadLettersListArgs) -> Result<Report> {
        let (mut text, mut all) = (String::new(), Vec::new());
        for (name, consumer) in self.consumers_named(args.consumer.as_deref())? {
            let letters = consumer
                .dead_letters(args.after, args.limit)
                .await
                .map_err(failed(name))?;
            text.push_str(&format!(
                "consumer {name}: {} dead letter(s)\n",
                letters.len()
            ));
            for letter in &letters {
                let what = match (&letter.stream, letter.version) {
                    (Some(stream), Some(version)) => format!("{stream} version {version}"),
                    _ => format!("subject {}", letter.message.subject),
                };
                text.push_str(&format!(
                    "  #{} {} {what} (attempts {}): {}\n",
                    letter.id,
                    rfc3339(letter.dead_at),
                    letter.attempts,
                    letter.reason
                ));
            }
            all.push(json!({
                "consumer": name,
                "dead_letters": letters.iter().map(letter_json).collect::<Vec<_>>(),
            }));
        }
        Ok(Report {
            text,
            json: json!({ "consumers": all }),
            damaged: None,
        })
    }

    async fn redrive(&self, args: &RedriveArgs) -> Result<Report> {
        let stream = match &args.stream {
            Some(stream) => Some(stream.parse::<StreamId>().map_err(cqrs_core::Error::from)?),
            None => None,
        };
        let (mut text, mut all) = (String::new(), Vec::new());
        for (name, consumer) in self.consumers_named(args.consumer.as_deref())? {
            let report = consumer
                .redrive(stream.clone())
                .await
                .map_err(failed(name))?;
            text.push_str(&format!(
                "consumer {name}: {} applied, {} duplicate(s) removed, {} left\n",
                report.applied, report.duplicates, report.remaining
            ));
            for stream in &report.unparked {
                text.push_str(&format!("  {stream}: no longer parked\n"));
            }
            for failure in &report.failures {
                text.push_str(&format!("  still failing: {failure}\n"));
            }
            all.push(json!({
                "consumer": name,
                "applied": report.applied,
                "duplicates": report.duplicates,
                "remaining": report.remaining,
                "unparked": report.unparked.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "failures": report.failures,
            }));
        }
        Ok(Report {
            text,
            json: json!({ "consumers": all }),
            damaged: None,
        })
    }

    /// Adds each consumer's inbox counts to a `stats` report.
    pub(super) async fn consumer_stats(&self, report: &mut Report) -> Result<()> {
        if self.consumers.is_empty() {
            return Ok(());
        }
        let mut all = Vec::new();
        report.text.push_str("consumers:\n");
        for (name, consumer) in &self.consumers {
            let stats = consumer.stats().await.map_err(failed(name))?;
            report.text.push_str(&format!(
                "  {name}: {} stream(s), {} parked, {} dead letter(s)\n",
                stats.streams, stats.parked, stats.dead_letters
            ));
            all.push(json!({
                "name": name,
                "streams": stats.streams,
                "parked": stats.parked,
                "dead_letters": stats.dead_letters,
            }));
        }
        if let Some(object) = report.json.as_object_mut() {
            object.insert("consumers".to_owned(), Value::Array(all));
        }
        Ok(())
    }
}
