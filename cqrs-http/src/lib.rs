#![doc = include_str!("../README.md")]

mod body;
mod config;
mod connection;
mod error;
mod server;
mod signal;

pub use config::ServeConfig;
pub use error::{Error, Result};
pub use server::serve;
pub use signal::shutdown_signal;
