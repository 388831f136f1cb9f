#![doc = include_str!("../README.md")]

mod error;
mod publisher;
mod subscription;
mod topology;

pub use error::{Error, Result};
pub use publisher::AmqpPublisher;
pub use subscription::{AmqpDelivery, AmqpSubscription};
pub use topology::QueueSettings;
