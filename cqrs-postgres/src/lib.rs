//! The PostgreSQL event store for `cqrs-core`.
//!
//! This crate is a placeholder: the backend is being built (see the project's issues).
