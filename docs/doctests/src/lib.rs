//! The guide's examples, compiled: every ```` ```rust ```` block of the pages in `docs/`
//! is a doctest of this crate, so `cargo test -p cqrs-docs` (and `cargo test
//! --workspace`, which the gate runs) builds each one and runs those that need no
//! database.
//!
//! A block that continues an earlier one on its page starts with hidden `# ` lines
//! (rustdoc does not show them) that bring in what it builds on. The small bank of
//! pages 2 and 4 is in [`getting_started`], so those lines stay short.
//!
//! To see a page's examples run: `cargo test -p cqrs-docs --doc Page02`.

pub mod getting_started;

/// Page 1, Concepts.
#[cfg(doctest)]
#[doc = include_str!("../../01-concepts.md")]
pub struct Page01Concepts;

/// Page 2, Getting started.
#[cfg(doctest)]
#[doc = include_str!("../../02-getting-started.md")]
pub struct Page02GettingStarted;

/// Page 3, Guarantees.
#[cfg(doctest)]
#[doc = include_str!("../../03-guarantees.md")]
pub struct Page03Guarantees;

/// Page 4, Projections.
#[cfg(doctest)]
#[doc = include_str!("../../04-projections.md")]
pub struct Page04Projections;

/// Page 5, Tutorial: the bank.
#[cfg(doctest)]
#[doc = include_str!("../../05-tutorial-bank.md")]
pub struct Page05TutorialBank;

/// Page 6, Operations.
#[cfg(doctest)]
#[doc = include_str!("../../06-operations.md")]
pub struct Page06Operations;

/// Page 7, Observability.
#[cfg(doctest)]
#[doc = include_str!("../../07-observability.md")]
pub struct Page07Observability;

/// Page 8, Events leave the service: the relay.
#[cfg(doctest)]
#[doc = include_str!("../../08-relay.md")]
pub struct Page08Relay;

/// Page 10, Data lifecycle.
#[cfg(doctest)]
#[doc = include_str!("../../10-data-lifecycle.md")]
pub struct Page10DataLifecycle;
