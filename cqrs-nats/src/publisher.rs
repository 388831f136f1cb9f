//! The JetStream publisher.

use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use cqrs_core::{Ack, OutboundMessage, PublishError, Publisher, SubjectScheme};

use crate::{Error, Result};

/// The JetStream stream that stores the published events: [`JetStreamPublisher::ensure_stream`]
/// creates it, or checks the one there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// The stream's name (no spaces, `.`, `*` or `>`), e.g. `BANK_EVENTS`.
    pub name: String,
    /// The subjects it captures: the scheme's [`all_subjects`](SubjectScheme::all_subjects).
    pub subjects: String,
    /// How long JetStream remembers message ids to drop a republished one. A relay
    /// republishes only what it had in flight at a crash, so minutes are plenty; the
    /// default is JetStream's, 2 minutes.
    pub duplicate_window: Duration,
    /// The largest message the stream stores, in bytes (`None`: the server's limit).
    pub max_message_size: Option<u32>,
}

impl StreamSettings {
    /// A file-backed stream named `name` for every subject of `scheme`, with a 2-minute
    /// deduplication window.
    pub fn new(name: impl Into<String>, scheme: &SubjectScheme) -> Self {
        StreamSettings {
            name: name.into(),
            subjects: scheme.all_subjects(),
            duplicate_window: Duration::from_secs(120),
            max_message_size: None,
        }
    }
}

/// A [`Publisher`] to NATS JetStream.
///
/// Each message goes to its subject with `Nats-Msg-Id` set to the event id (JetStream
/// drops a republished id within the stream's
/// [`duplicate_window`](StreamSettings::duplicate_window) and says so in its `PubAck`),
/// the envelope in headers, and the payload as the body. A batch is sent in one go on
/// one connection, in order, and then every `PubAck` is awaited (each with the client's
/// timeout, 5 s by default).
///
/// A refusal in the `PubAck` (no stream for the subject, a message over the stream's
/// size limit, a full stream) is [`PublishError::Refused`]; a timeout or a broken
/// connection is [`PublishError::Unavailable`]. The client reconnects by itself; the
/// relay retries. A message with a header name that is not visible ASCII without `:` is
/// refused without being sent.
///
/// # Examples
/// ```no_run
/// use cqrs_core::{InMemoryEventStore, Relay, SubjectScheme};
/// use cqrs_nats::{JetStreamPublisher, StreamSettings};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let scheme = SubjectScheme::new("bank")?;
/// let publisher = JetStreamPublisher::connect("nats://127.0.0.1:4222").await?;
/// publisher.ensure_stream(&StreamSettings::new("BANK_EVENTS", &scheme)).await?;
///
/// let store = InMemoryEventStore::new();
/// let mut relay = Relay::new("bank", &store, publisher, scheme);
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // send to stop it
/// relay.run_until(async { let _ = stopped.await; }).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JetStreamPublisher {
    context: jetstream::Context,
}

impl JetStreamPublisher {
    /// Connects to the NATS server at `url` (`nats://host:port`).
    ///
    /// # Errors
    /// [`Error::Connect`] if the server cannot be reached (within 5 s).
    pub async fn connect(url: &str) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|source| Error::Connect {
                url: url.to_owned(),
                source: source.into(),
            })?;
        Ok(Self::new(client))
    }

    /// A publisher on a connected client (to set credentials, TLS or timeouts on
    /// `async_nats::ConnectOptions` first).
    pub fn new(client: async_nats::Client) -> Self {
        JetStreamPublisher {
            context: jetstream::new(client),
        }
    }

    /// The JetStream context, to read or manage streams.
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// Creates the stream if it does not exist; if it does, checks that it captures
    /// the settings' subjects (its other settings are left as they are).
    ///
    /// # Errors
    /// [`Error::JetStream`] if the request fails; [`Error::StreamSubjects`] if an
    /// existing stream does not capture the subjects.
    pub async fn ensure_stream(&self, settings: &StreamSettings) -> Result<()> {
        let max_message_size = match settings.max_message_size {
            Some(bytes) => i32::try_from(bytes).unwrap_or(i32::MAX),
            None => -1,
        };
        let config = jetstream::stream::Config {
            name: settings.name.clone(),
            subjects: vec![settings.subjects.clone()],
            duplicate_window: settings.duplicate_window,
            max_message_size,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let mut stream = self
            .context
            .get_or_create_stream(config)
            .await
            .map_err(|source| Error::JetStream {
                operation: "creating or getting the stream",
                source: source.into(),
            })?;
        let info = stream.info().await.map_err(|source| Error::JetStream {
            operation: "reading the stream's settings",
            source: source.into(),
        })?;
        if !info.config.subjects.contains(&settings.subjects) {
            return Err(Error::StreamSubjects {
                stream: settings.name.clone(),
                subjects: settings.subjects.clone(),
            });
        }
        Ok(())
    }

    /// Deletes the stream `name` and every message in it.
    ///
    /// # Errors
    /// [`Error::JetStream`] if the request fails (or there is no such stream).
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        self.context
            .delete_stream(name)
            .await
            .map(|_| ())
            .map_err(|source| Error::JetStream {
                operation: "deleting the stream",
                source: source.into(),
            })
    }
}

fn publish_error(error: jetstream::context::PublishError) -> PublishError {
    match error.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => PublishError::Unavailable {
            source: error.into(),
        },
        _ => PublishError::Refused {
            source: error.into(),
        },
    }
}

/// Whether `name` may be a header name on the wire: visible ASCII, no `:`.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The JetStream message of `message`: `Nats-Msg-Id`, the envelope headers, the payload.
///
/// Built for the hot path: header names from the static strings (no copy), the id
/// encoded without the formatting machinery, values copied once.
fn publish_message(message: &OutboundMessage) -> Result<PublishMessage, PublishError> {
    if let Some((name, _)) = message
        .headers
        .iter()
        .find(|(name, _)| !valid_header_name(name))
    {
        return Err(PublishError::Refused {
            source: format!("invalid header name {name:?}").into(),
        });
    }
    let mut id = [0u8; 45];
    let id: &str = message.message_id.hyphenated().encode_lower(&mut id);
    let headers: HeaderMap =
        std::iter::once((async_nats::header::NATS_MESSAGE_ID, HeaderValue::from(id)))
            .chain(message.headers.iter().map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from(value.as_str()),
                )
            }))
            .collect();
    Ok(PublishMessage::build()
        .payload(message.payload.clone().into())
        .headers(headers))
}

impl Publisher for JetStreamPublisher {
    async fn publish<'a>(&'a self, batch: &'a [OutboundMessage]) -> Vec<Result<Ack, PublishError>> {
        // Send all first (in order, on one connection), then await the acks together.
        let mut pending = Vec::with_capacity(batch.len());
        for message in batch {
            pending.push(match publish_message(message) {
                Ok(publish) => self
                    .context
                    .send_publish(message.subject.clone(), publish)
                    .await
                    .map_err(publish_error),
                Err(error) => Err(error),
            });
        }
        let acks = pending.into_iter().map(|sent| async move {
            let ack = sent?.await.map_err(publish_error)?;
            Ok(Ack {
                duplicate: ack.duplicate,
            })
        });
        futures::future::join_all(acks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: Vec<(&'static str, String)>) -> OutboundMessage {
        OutboundMessage {
            message_id: "0190b6b2-0000-7000-8000-000000000001"
                .parse()
                .expect("a uuid"),
            subject: "bank.account.1".into(),
            headers,
            payload: b"{}".to_vec(),
            stream: cqrs_core::StreamId::new("account", "1").expect("an id"),
            version: 1,
            position: cqrs_core::Position::new(0, 1),
        }
    }

    #[test]
    fn envelope_headers_are_accepted() {
        // What goes on the wire is checked against a server by the conformance suite
        // (`tests/conformance.rs`: the id) and `tests/relay.rs` (the version header).
        let built = publish_message(&message(vec![
            ("Cqrs-Version", "1".into()),
            ("Cqrs-Event-Type", "Opened".into()),
        ]));
        assert!(built.is_ok());
    }

    #[test]
    fn an_invalid_header_name_is_refused_not_a_panic() {
        for name in ["Bad:Name", "Bad Name", ""] {
            let refused = publish_message(&message(vec![(name, "x".into())]));
            assert!(
                matches!(refused, Err(PublishError::Refused { .. })),
                "{name:?}"
            );
        }
    }
}
