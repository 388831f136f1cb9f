//! Upcasting: lifting old event shapes to the current one on every read path.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::BoxError;

/// An event on its way through the upcaster chain: type name, schema version and the
/// payload as a JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonEvent {
    /// The type name (an upcaster may rename it).
    pub event_type: String,
    /// The payload's schema version (an upcaster raises it).
    pub schema_version: u32,
    /// The payload.
    pub payload: serde_json::Value,
}

type UpcastFn = dyn Fn(JsonEvent) -> Result<JsonEvent, BoxError> + Send + Sync;

/// A chain of upcasters keyed by `(event_type, schema_version)`.
///
/// When a record is read (loading an aggregate, replaying a projection, reading the log
/// through a [`JsonCodec`](crate::JsonCodec)), the upcaster registered for its type and
/// version runs, then the one registered for the result, and so on until none matches.
/// Each step must change the type or the version; a chain longer than
/// [`Upcasters::MAX_STEPS`] is reported as an error, never an endless loop.
///
/// # Examples
/// Version 1 of `MoneyDeposited` had `amount` in whole units; version 2 has
/// `amount_cents`:
/// ```
/// use cqrs_core::{JsonEvent, Upcasters};
/// use serde_json::json;
///
/// let upcasters = Upcasters::new().register("MoneyDeposited", 1, |mut e: JsonEvent| {
///     let amount = e.payload["Deposited"]["amount"].as_i64().ok_or("amount is missing")?;
///     e.payload = json!({ "Deposited": { "amount_cents": amount * 100 } });
///     e.schema_version = 2;
///     Ok(e)
/// });
/// let old = JsonEvent {
///     event_type: "MoneyDeposited".into(),
///     schema_version: 1,
///     payload: json!({ "Deposited": { "amount": 5 } }),
/// };
/// let new = upcasters.upcast(old)?;
/// assert_eq!(new.schema_version, 2);
/// assert_eq!(new.payload["Deposited"]["amount_cents"], 500);
/// # Ok::<(), cqrs_core::BoxError>(())
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    by_type: HashMap<String, BTreeMap<u32, Arc<UpcastFn>>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(&str, u32)> = self
            .by_type
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |v| (t.as_str(), *v)))
            .collect();
        f.debug_struct("Upcasters")
            .field("registered", &keys)
            .finish()
    }
}

impl Upcasters {
    /// The longest chain of upcasters applied to one event.
    pub const MAX_STEPS: usize = 64;

    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `upcaster` for events of `event_type` at `schema_version`, replacing any
    /// upcaster registered for the same pair.
    pub fn register<F>(
        mut self,
        event_type: impl Into<String>,
        schema_version: u32,
        upcaster: F,
    ) -> Self
    where
        F: Fn(JsonEvent) -> Result<JsonEvent, BoxError> + Send + Sync + 'static,
    {
        self.by_type
            .entry(event_type.into())
            .or_default()
            .insert(schema_version, Arc::new(upcaster));
        self
    }

    /// Whether no upcaster is registered.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// The type names that have an upcaster (for some schema version), in no particular
    /// order.
    pub fn source_types(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_type.keys().map(String::as_str)
    }

    /// Whether an upcaster is registered for this type and version.
    pub fn applies_to(&self, event_type: &str, schema_version: u32) -> bool {
        self.by_type
            .get(event_type)
            .is_some_and(|versions| versions.contains_key(&schema_version))
    }

    /// Runs the chain on `event` until no upcaster matches.
    ///
    /// # Errors
    /// What an upcaster returned, or an error if an upcaster left type and version
    /// unchanged or the chain ran longer than [`Self::MAX_STEPS`].
    pub fn upcast(&self, mut event: JsonEvent) -> Result<JsonEvent, BoxError> {
        for _ in 0..Self::MAX_STEPS {
            let Some(step) = self
                .by_type
                .get(&event.event_type)
                .and_then(|versions| versions.get(&event.schema_version))
            else {
                return Ok(event);
            };
            let before = (event.event_type.clone(), event.schema_version);
            event = step(event)?;
            if (event.event_type.as_str(), event.schema_version) == (before.0.as_str(), before.1) {
                return Err(format!(
                    "the upcaster for {:?} version {} left type and version unchanged",
                    before.0, before.1
                )
                .into());
            }
        }
        Err(format!(
            "more than {} upcasting steps: is there a cycle?",
            Self::MAX_STEPS
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(t: &str, v: u32) -> JsonEvent {
        JsonEvent {
            event_type: t.into(),
            schema_version: v,
            payload: json!({}),
        }
    }

    #[test]
    fn chains_steps_including_renames() {
        let u = Upcasters::new()
            .register("Old", 1, |mut e: JsonEvent| {
                e.schema_version = 2;
                e.payload["v2"] = json!(true);
                Ok(e)
            })
            .register("Old", 2, |mut e: JsonEvent| {
                e.event_type = "New".into();
                e.schema_version = 1;
                Ok(e)
            });
        let out = u.upcast(event("Old", 1)).unwrap();
        assert_eq!((out.event_type.as_str(), out.schema_version), ("New", 1));
        assert_eq!(out.payload["v2"], json!(true));
        assert!(u.applies_to("Old", 2) && !u.applies_to("New", 1));
        assert_eq!(u.upcast(event("Other", 1)).unwrap(), event("Other", 1));
    }

    #[test]
    fn refuses_no_progress_and_cycles() {
        let stuck = Upcasters::new().register("A", 1, Ok);
        assert!(stuck.upcast(event("A", 1)).is_err());
        let cycle = Upcasters::new()
            .register("A", 1, |mut e: JsonEvent| {
                e.event_type = "B".into();
                Ok(e)
            })
            .register("B", 1, |mut e: JsonEvent| {
                e.event_type = "A".into();
                Ok(e)
            });
        assert!(
            cycle
                .upcast(event("A", 1))
                .unwrap_err()
                .to_string()
                .contains("cycle")
        );
    }

    #[test]
    fn upcaster_errors_are_returned() {
        let u = Upcasters::new().register("A", 1, |_e: JsonEvent| Err("bad old payload".into()));
        assert_eq!(
            u.upcast(event("A", 1)).unwrap_err().to_string(),
            "bad old payload"
        );
    }
}
