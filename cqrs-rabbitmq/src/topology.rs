//! The exchange, the queues and their bindings; the connection and the header table
//! shared by the publisher and the subscription.

use std::time::Duration;

use cqrs_core::SubjectScheme;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::error::redact;
use crate::{Error, Result};

/// The longest exchange name, queue name, routing key or message id AMQP 0-9-1 carries
/// (a "short string").
pub(crate) const MAX_SHORT_STRING: usize = 255;

/// A durable queue of a consuming service, bound to the publisher's topic exchange:
/// what [`AmqpPublisher::ensure_queue`](crate::AmqpPublisher::ensure_queue) and every
/// (re)connection of an [`AmqpSubscription`](crate::AmqpSubscription) declare.
///
/// One queue per consuming service (not per process): the broker hands each message to
/// one of the queue's consumers, and keeps it until one of them acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// The queue's name, e.g. `ledger.bank-events` (at most 255 bytes).
    pub name: String,
    /// The topic exchange the publisher publishes to (at most 255 bytes).
    pub exchange: String,
    /// The binding key: `<prefix>.#` for every event of a [`SubjectScheme`]; narrow it
    /// to `<prefix>.<type>.*` for one aggregate type (the type percent-encoded as by
    /// [`cqrs_core::escape_token`]).
    pub binding_key: String,
    /// The most bytes of message bodies the queue holds (`x-max-length-bytes`) before
    /// the broker refuses new messages (`x-overflow: reject-publish`: the publisher
    /// gets a negative confirm, [`PublishError::Refused`](cqrs_core::PublishError)),
    /// rather than dropping old ones. `None`: no limit.
    pub max_length_bytes: Option<u32>,
}

impl QueueSettings {
    /// A durable queue `name` bound to `exchange` with `<prefix>.#`: every event of
    /// `scheme`.
    pub fn new(
        name: impl Into<String>,
        exchange: impl Into<String>,
        scheme: &SubjectScheme,
    ) -> Self {
        QueueSettings {
            name: name.into(),
            exchange: exchange.into(),
            binding_key: binding_key(scheme),
            max_length_bytes: None,
        }
    }
}

/// The topic-exchange binding key of every routing key of `scheme`: `<prefix>.#`.
pub(crate) fn binding_key(scheme: &SubjectScheme) -> String {
    format!("{}.#", scheme.prefix())
}

/// A short string, or the error naming what is too long.
pub(crate) fn short(what: &'static str, text: &str) -> Result<ShortString> {
    if text.len() > MAX_SHORT_STRING {
        return Err(Error::Topology {
            operation: what,
            source: format!("{} bytes, AMQP names are at most 255", text.len()).into(),
        });
    }
    Ok(ShortString::from(text))
}

/// Connects to `url`, within `timeout`.
pub(crate) async fn connect(url: &str, timeout: Duration, name: &str) -> Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
    let connect_error = |source: cqrs_core::BoxError| Error::Connect {
        url: redact(url),
        source,
    };
    match tokio::time::timeout(timeout, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(connect_error(error.into())),
        Err(_) => Err(connect_error(
            format!("no connection within {timeout:?}").into(),
        )),
    }
}

/// Runs a declaration within `timeout`, naming it in the error.
pub(crate) async fn declaring<T>(
    operation: &'static str,
    timeout: Duration,
    declaration: impl Future<Output = lapin::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, declaration).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Error::Topology {
            operation,
            source: error.into(),
        }),
        Err(_) => Err(Error::Topology {
            operation,
            source: format!("no answer within {timeout:?}").into(),
        }),
    }
}

/// Declares the durable topic exchange `name`.
pub(crate) async fn declare_exchange(
    channel: &Channel,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let exchange = short("declaring the exchange", name)?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    declaring(
        "declaring the exchange",
        timeout,
        channel.exchange_declare(
            exchange,
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        ),
    )
    .await
}

/// Declares the exchange, the durable queue and its binding.
pub(crate) async fn declare_queue(
    channel: &Channel,
    settings: &QueueSettings,
    timeout: Duration,
) -> Result<()> {
    declare_exchange(channel, &settings.exchange, timeout).await?;
    let queue = short("declaring the queue", &settings.name)?;
    let mut arguments = FieldTable::default();
    if let Some(bytes) = settings.max_length_bytes {
        arguments.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::from(bytes)),
        );
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    declaring(
        "declaring the queue",
        timeout,
        channel.queue_declare(queue.clone(), options, arguments),
    )
    .await?;
    let exchange = short("binding the queue", &settings.exchange)?;
    let key = short("binding the queue", &settings.binding_key)?;
    declaring(
        "binding the queue",
        timeout,
        channel.queue_bind(
            queue,
            exchange,
            key,
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// The `Cqrs-*` headers as an AMQP header table (long strings).
pub(crate) fn header_table(headers: &[(&'static str, String)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    table
}

/// The string entries of an AMQP header table, as (name, value) pairs in the table's
/// order (by name). Entries of other types (numbers, tables) and strings that are not
/// UTF-8 are left out: the `Cqrs-*` headers are all strings.
pub(crate) fn header_pairs(table: Option<&FieldTable>) -> Vec<(String, String)> {
    let Some(table) = table else {
        return Vec::new();
    };
    table
        .into_iter()
        .filter_map(|(name, value)| {
            let text = match value {
                AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok()?,
                AMQPValue::ShortString(text) => text.as_str(),
                _ => return None,
            };
            Some((name.as_str().to_owned(), text.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_table() {
        let headers = [
            ("Cqrs-Version", "3".to_owned()),
            ("Cqrs-Stream-Id", "a%2Eb".to_owned()),
        ];
        let mut table = header_table(&headers);
        table.insert("x-number".into(), AMQPValue::LongInt(4));
        let pairs = header_pairs(Some(&table));
        assert_eq!(
            pairs,
            [
                ("Cqrs-Stream-Id".to_owned(), "a%2Eb".to_owned()),
                ("Cqrs-Version".to_owned(), "3".to_owned()),
            ]
        );
        assert!(header_pairs(None).is_empty());
    }

    #[test]
    fn binding_covers_the_scheme() {
        let scheme = SubjectScheme::new("bank.events").expect("a valid prefix");
        let settings = QueueSettings::new("ledger", "bank", &scheme);
        assert_eq!(settings.binding_key, "bank.events.#");
        assert!(short("naming", &"x".repeat(256)).is_err());
        assert!(short("naming", &"x".repeat(255)).is_ok());
    }
}
