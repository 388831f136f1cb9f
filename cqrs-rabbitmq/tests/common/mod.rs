//! A RabbitMQ virtual host of the test's own (made with `rabbitmqctl`), deleted when
//! the test ends, also on failure; and reading a queue back without consuming it.

#![allow(dead_code)] // each test binary uses its own part

pub(crate) mod ledger;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use cqrs_core::conformance::publisher::StoredMessage;
use cqrs_core::{BoxError, SubjectScheme};
use cqrs_rabbitmq::{AmqpPublisher, QueueSettings};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::AMQPValue;

/// Where the broker listens: `RABBITMQ_ADDR`, or the local one.
fn broker_addr() -> String {
    std::env::var("RABBITMQ_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".to_owned())
}

/// Whether the broker must be there (`CQRS_REQUIRE_RABBITMQ=1`): a missing broker fails
/// the test instead of skipping it.
fn required() -> bool {
    std::env::var("CQRS_REQUIRE_RABBITMQ").as_deref() == Ok("1")
}

/// Runs `rabbitmqctl args...` (with its own 60 s timeout); the error says why it failed.
pub(crate) fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let mut full = vec!["--timeout", "60"];
    full.extend_from_slice(args);
    match Command::new("rabbitmqctl").args(&full).output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "rabbitmqctl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Err(format!("cannot run rabbitmqctl: {error}")),
    }
}

/// Whether something accepts connections on the broker's port.
pub(crate) fn broker_answers() -> bool {
    let Ok(addr) = broker_addr().parse::<SocketAddr>() else {
        return false;
    };
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// A fresh vhost `cqrs_t_<random>` that the guest user may use; its `Drop` deletes it
/// (with everything in it).
pub(crate) struct TestVhost {
    pub(crate) name: String,
    pub(crate) url: String,
}

impl TestVhost {
    /// `None` (after saying `skipped`) when no broker answers or `rabbitmqctl` cannot
    /// make the vhost, unless `CQRS_REQUIRE_RABBITMQ=1`, which makes that a failure.
    pub(crate) fn new() -> Option<Self> {
        let skip = |why: String| {
            if required() {
                panic!("CQRS_REQUIRE_RABBITMQ=1 but RabbitMQ is not available: {why}");
            }
            eprintln!("skipped: RabbitMQ is not available ({why})");
        };
        if !broker_answers() {
            skip(format!("nothing answers on {}", broker_addr()));
            return None;
        }
        let name = format!("cqrs_t_{}", uuid::Uuid::new_v4().simple());
        if let Err(why) = rabbitmqctl(&["add_vhost", &name]) {
            skip(why);
            return None;
        }
        // From here on, the guard deletes the vhost whatever happens.
        let vhost = TestVhost {
            url: format!("amqp://guest:guest@{}/{name}", broker_addr()),
            name,
        };
        let permissions = [
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ];
        if let Err(why) = rabbitmqctl(&permissions) {
            panic!("cannot let guest use the test vhost: {why}");
        }
        Some(vhost)
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        if let Err(why) = rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("could not delete the test vhost {}: {why}", self.name);
        }
    }
}

/// A publisher on a fresh vhost with the exchange `events` and a queue `q` bound to it
/// with `test.#` (refusing messages once it holds `max_length_bytes`).
pub(crate) struct TestBroker {
    pub(crate) publisher: AmqpPublisher,
    pub(crate) scheme: SubjectScheme,
    pub(crate) queue: QueueSettings,
    // Dropped last: after the publisher's connection.
    pub(crate) vhost: TestVhost,
}

impl TestBroker {
    pub(crate) async fn new(max_length_bytes: Option<u32>) -> Option<Self> {
        let vhost = TestVhost::new()?;
        let publisher = tokio::time::timeout(
            Duration::from_secs(20),
            AmqpPublisher::connect(&vhost.url, "events"),
        )
        .await
        .expect("connecting within 20 s")
        .expect("connecting to the test vhost");
        publisher
            .ensure_exchange()
            .await
            .expect("declaring the exchange");
        let scheme = SubjectScheme::new("test").expect("a valid prefix");
        let mut queue = QueueSettings::new("q", "events", &scheme);
        queue.max_length_bytes = max_length_bytes;
        publisher
            .ensure_queue(&queue)
            .await
            .expect("declaring the queue");
        Some(TestBroker {
            publisher,
            scheme,
            queue,
            vhost,
        })
    }

    /// Every message in the queue, in queue order, left in the queue (fetched without
    /// acknowledging, then given back).
    pub(crate) async fn stored(&self) -> Result<Vec<StoredMessage>, BoxError> {
        tokio::time::timeout(Duration::from_secs(30), self.read_back())
            .await
            .map_err(|_| "reading the queue back took over 30 s")?
    }

    async fn read_back(&self) -> Result<Vec<StoredMessage>, BoxError> {
        let channel = self.publisher.management_channel().await?;
        let mut stored = Vec::new();
        let mut last_tag = None;
        while let Some(message) = channel
            .basic_get(self.queue.name.as_str().into(), BasicGetOptions::default())
            .await?
        {
            let delivery = &message.delivery;
            last_tag = Some(delivery.delivery_tag);
            let headers = delivery
                .properties
                .headers()
                .as_ref()
                .map(|table| {
                    table
                        .into_iter()
                        .filter_map(|(name, value)| match value {
                            AMQPValue::LongString(text) => Some((
                                name.as_str().to_owned(),
                                String::from_utf8(text.as_bytes().to_vec()).ok()?,
                            )),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            stored.push(StoredMessage {
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
                subject: delivery.routing_key.as_str().to_owned(),
                headers,
                payload: delivery.data.clone(),
            });
        }
        if let Some(tag) = last_tag {
            let requeue = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            channel.basic_nack(tag, requeue).await?;
        }
        channel.close(200, "read".into()).await?;
        Ok(stored)
    }
}
