#![doc = include_str!("../README.md")]

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

mod attr;
mod expand;

/// Derives `cqrs_core::DomainEvent`: the stored type names (`EVENT_TYPES`), the name of
/// each value (`event_type`) and, when asked for, its payload version (`schema_version`).
///
/// Use it as `cqrs_core::DomainEvent`, with `cqrs-core`'s `derive` feature on. The
/// generated impl names the trait `::cqrs_core::DomainEvent`, so `cqrs-core` must be a
/// dependency under that name.
///
/// # On an enum
///
/// Each variant is one event type. Its stored name is the variant's name, or the one
/// given by `#[event(name = "...")]` on the variant. `EVENT_TYPES` lists the names in
/// the order the variants are declared, and `event_type` matches on the variant.
///
/// ```
/// use cqrs_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum AccountEvent {
///     #[event(name = "AccountOpened")]
///     Opened { owner: String },
///     #[event(name = "MoneyDeposited", schema_version = 2)]
///     Deposited { amount_cents: u64 },
///     Closed,
/// }
///
/// assert_eq!(AccountEvent::EVENT_TYPES, ["AccountOpened", "MoneyDeposited", "Closed"]);
/// assert_eq!(AccountEvent::Opened { owner: "Ada".into() }.event_type(), "AccountOpened");
/// assert_eq!(AccountEvent::Closed.event_type(), "Closed");
/// assert_eq!(AccountEvent::Deposited { amount_cents: 1 }.schema_version(), 2);
/// assert_eq!(AccountEvent::Closed.schema_version(), 1);
/// ```
///
/// # On a struct
///
/// The struct is one event type, named by the struct or by `#[event(name = "...")]` on
/// it.
///
/// ```
/// use cqrs_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
/// #[event(name = "MoneyDeposited")]
/// struct Deposited {
///     cents: u64,
/// }
///
/// assert_eq!(Deposited::EVENT_TYPES, ["MoneyDeposited"]);
/// assert_eq!(Deposited { cents: 5 }.event_type(), "MoneyDeposited");
/// assert_eq!(Deposited { cents: 5 }.schema_version(), 1);
/// ```
///
/// # The `#[event(...)]` keys
///
/// - `name = "..."`: the stored type name, instead of the Rust identifier. The name is
///   persisted with every event, so once events are stored it must never change; set it
///   explicitly when the Rust name might be renamed, and keep it when you rename the
///   variant. It cannot be empty, and two variants cannot share one.
/// - `schema_version = N`: the version of this type's payload shape, an integer from 1.
///   Without it a type is at version 1 (the trait's default; when no variant sets one,
///   the derive leaves `schema_version` to the trait). Bump it when the payload's shape
///   changes, and register an upcaster for the old shape.
///
/// Both keys may be written in one attribute or in several. On an enum they go on the
/// variants, not on the enum.
///
/// # The tombstone variant
///
/// A variant named `"$stream-deleted"` (`cqrs_core::STREAM_DELETED`) holding one
/// `cqrs_core::StreamDeleted` receives the tombstone a deleted stream leaves: the derive
/// writes `from_stream_deleted` for it, so a projection over this type is told which
/// stream was deleted. Commands cannot append it (`$` names are the store's own).
///
/// # Compile errors
///
/// The derive refuses, pointing at the offending tokens: two variants with one name, an
/// empty name, a key other than `name` and `schema_version`, a key given twice, a
/// `schema_version` that is not an integer from 1 to `u32::MAX`, `#[event]` on the enum
/// itself or on a field, a `"$stream-deleted"` variant not holding exactly one field,
/// and a union. Every mistake of one type is reported in one build.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
