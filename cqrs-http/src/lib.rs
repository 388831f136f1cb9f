#![doc = include_str!("../README.md")]

mod body;
mod config;
mod connection;
mod error;
mod health;
mod server;
mod signal;

pub use config::ServeConfig;
pub use error::{Error, Result};
pub use health::{CheckOutcome, HealthChecks, Readiness, metrics_router};
pub use server::serve;
pub use signal::shutdown_signal;
