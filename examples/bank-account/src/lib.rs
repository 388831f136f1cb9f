//! The bank-account example application (binary `bank`) is not written yet; until it
//! is, `cargo run -p cqrs-core --example quickstart` is the runnable example.
