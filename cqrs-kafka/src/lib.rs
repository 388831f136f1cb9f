#![doc = include_str!("../README.md")]

mod error;
mod publisher;
mod subscription;

pub use error::{Error, Result};
pub use publisher::KafkaPublisher;
pub use subscription::{GroupSettings, KafkaDelivery, KafkaSubscription};
