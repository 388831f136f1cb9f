//! The error type of `cqrs-kafka`.

use cqrs_core::BoxError;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when setting up a Kafka client or a topic. (Publishing reports
/// [`cqrs_core::PublishError`] per message, and a subscription
/// [`cqrs_core::SubscribeError`], instead.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not `kafka://HOST:PORT[,HOST:PORT...]`.
    ///
    /// Handling: fix the URL; retrying does not help.
    #[error("not a Kafka URL: {url:?} (expected kafka://HOST:PORT[,HOST:PORT...])")]
    Url {
        /// The URL given.
        url: String,
    },
    /// The client could not be made (a configuration librdkafka refuses), or the
    /// brokers did not answer in time.
    ///
    /// Handling: check the brokers' addresses and that they run; retry later.
    #[error("cannot connect to Kafka at {brokers}")]
    Connect {
        /// The bootstrap servers.
        brokers: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// Creating or describing the topic failed (or did not finish in time).
    ///
    /// Handling: a topic that exists with other settings is not an error (it is kept
    /// as it is); a refusal names the reason (an invalid name, too many partitions).
    #[error("Kafka failed while {operation} topic {topic:?}")]
    Topic {
        /// What was being done.
        operation: &'static str,
        /// The topic.
        topic: String,
        /// The client's or the broker's error.
        #[source]
        source: BoxError,
    },
}

/// The bootstrap servers of a `kafka://HOST:PORT[,HOST:PORT...]` URL.
pub(crate) fn bootstrap_servers(url: &str) -> Result<String> {
    let invalid = || Error::Url {
        url: url.to_owned(),
    };
    let rest = url.strip_prefix("kafka://").ok_or_else(invalid)?;
    let rest = rest.trim_end_matches('/');
    let hosts: Vec<&str> = rest.split(',').collect();
    let valid = |host: &str| {
        host.rsplit_once(':').is_some_and(|(name, port)| {
            !name.is_empty()
                && !name.contains(['/', '@', '?', '#'])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        })
    };
    if hosts.iter().all(|h| valid(h)) {
        Ok(hosts.join(","))
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::bootstrap_servers;

    #[test]
    fn a_kafka_url_names_its_brokers() {
        assert_eq!(
            bootstrap_servers("kafka://127.0.0.1:9092").ok().as_deref(),
            Some("127.0.0.1:9092")
        );
        assert_eq!(
            bootstrap_servers("kafka://a:1,b:2/").ok().as_deref(),
            Some("a:1,b:2")
        );
        for bad in [
            "nats://127.0.0.1:4222",
            "kafka://",
            "kafka://host",
            "kafka://host:0",
            "kafka://host:99999",
            "kafka://user@host:1",
            "kafka://a:1,,b:2",
        ] {
            assert!(bootstrap_servers(bad).is_err(), "{bad} is refused");
        }
    }
}
