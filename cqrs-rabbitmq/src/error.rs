//! The error type of `cqrs-rabbitmq`.

use cqrs_core::BoxError;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when connecting to RabbitMQ or declaring the exchange and queues.
/// (Publishing reports [`cqrs_core::PublishError`] per message, and a subscription
/// [`cqrs_core::SubscribeError`], instead.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached, or refused the login or the virtual host.
    ///
    /// Handling: check the URL (credentials, the vhost percent-encoded: `%2f` for `/`)
    /// and that the broker runs; retry later.
    #[error("cannot connect to RabbitMQ at {url}")]
    Connect {
        /// The URL that was tried, without its password.
        url: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// Declaring the exchange, a queue or a binding failed (or did not finish in time).
    ///
    /// Handling: an existing exchange or queue of that name with other settings (not
    /// durable, another type, other arguments) makes the broker refuse the declaration:
    /// use another name, or delete the old one.
    #[error("RabbitMQ failed while {operation}")]
    Topology {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

/// `url` without the password between `:` and `@` of its authority.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/v1"),
            "amqp://guest:***@127.0.0.1:5672/v1"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redact("not a url"), "not a url");
    }
}
