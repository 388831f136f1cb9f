#![doc = include_str!("../README.md")]

mod error;
mod publisher;

pub use error::{Error, Result};
pub use publisher::{JetStreamPublisher, StreamSettings};
