//! Given/when/then tests for aggregates.
//!
//! An aggregate's `handle` is a pure function of its state, so a test states the past
//! (`given` events), the command (`when`) and what must come out (`then_expect_*`). The
//! kit also checks what a store would: every event's type is one of
//! `EVENT_TYPES`, and each event survives the JSON codec unchanged.
//!
//! The `then_*` methods panic with a readable message when an expectation fails: they
//! are meant for tests.
//!
//! # Examples
//! ```
//! # use cqrs_core::{Aggregate, DomainEvent};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Default, Serialize, Deserialize)]
//! # struct Counter { value: u64 }
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! # enum CounterEvent { Incremented { by: u64 } }
//! # impl DomainEvent for CounterEvent {
//! #     const EVENT_TYPES: &'static [&'static str] = &["Incremented"];
//! #     fn event_type(&self) -> &'static str { "Incremented" }
//! # }
//! # #[derive(Debug, thiserror::Error)]
//! # #[error("cannot increment by zero")]
//! # struct IncrementByZero;
//! # impl Aggregate for Counter {
//! #     const TYPE: &'static str = "counter";
//! #     type Command = u64;
//! #     type Event = CounterEvent;
//! #     type Error = IncrementByZero;
//! #     type Services = ();
//! #     fn handle(&self, by: &u64, _: &()) -> Result<Vec<CounterEvent>, IncrementByZero> {
//! #         if *by == 0 { return Err(IncrementByZero); }
//! #         Ok(vec![CounterEvent::Incremented { by: *by }])
//! #     }
//! #     fn apply(&mut self, event: CounterEvent) {
//! #         match event { CounterEvent::Incremented { by } => self.value += by }
//! #     }
//! # }
//! use cqrs_core::testkit::AggregateTest;
//!
//! AggregateTest::<Counter>::new(())
//!     .given([CounterEvent::Incremented { by: 2 }])
//!     .when(3)
//!     .then_expect_events([CounterEvent::Incremented { by: 3 }])
//!     .then_expect_state(|c| assert_eq!(c.value, 5));
//!
//! AggregateTest::<Counter>::new(())
//!     .given_no_previous_events()
//!     .when(0)
//!     .then_expect_error_message("cannot increment by zero");
//! ```

use std::fmt::Debug;
use std::time::SystemTime;

use uuid::Uuid;

use crate::{
    Aggregate, Codec, DomainEvent, JsonCodec, Metadata, Position, RecordedEvent, StreamId,
};

/// The start of an aggregate test: the services `handle` gets.
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    services: A::Services,
}

impl<A: Aggregate> AggregateTest<A>
where
    A::Event: PartialEq + Debug,
{
    /// A test whose commands are handled with `services`.
    pub fn new(services: A::Services) -> Self {
        AggregateTest { services }
    }

    /// The aggregate's past: these events are applied, in order, to `A::default()`.
    pub fn given(self, events: impl IntoIterator<Item = A::Event>) -> Given<A> {
        let mut state = A::default();
        for event in events {
            check_event(&event);
            state.apply(event);
        }
        Given {
            state,
            services: self.services,
        }
    }

    /// An aggregate without history.
    pub fn given_no_previous_events(self) -> Given<A> {
        self.given([])
    }
}

/// An aggregate with a history, waiting for a command.
#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: A,
    services: A::Services,
}

impl<A: Aggregate> Given<A>
where
    A::Event: PartialEq + Debug,
{
    /// Handles `command` against the given state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.handle(&command, &self.services);
        Then {
            state: self.state,
            result,
        }
    }
}

/// The outcome of a command, to check.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts that the command was accepted and decided exactly `expected`; each event
    /// must also survive the JSON codec. Returns `self` to check the state afterwards.
    ///
    /// # Panics
    /// If the command was rejected or decided other events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.result {
            Ok(events) => {
                assert_eq!(
                    events, &expected,
                    "the command decided other events than expected"
                );
                for event in events {
                    check_event(event);
                }
            }
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e}"),
        }
        self
    }

    /// Asserts that the command was rejected and returns the rejection.
    ///
    /// # Panics
    /// If the command was accepted.
    #[track_caller]
    pub fn then_expect_error(self) -> A::Error {
        match self.result {
            Ok(events) => panic!("expected a rejection, but the command decided {events:?}"),
            Err(e) => e,
        }
    }

    /// Asserts that the command was rejected with this message (its `Display`).
    ///
    /// # Panics
    /// If the command was accepted or rejected with another message.
    #[track_caller]
    pub fn then_expect_error_message(self, message: &str) {
        let error = self.then_expect_error();
        assert_eq!(
            error.to_string(),
            message,
            "the rejection's message differs"
        );
    }

    /// Runs `check` on the state after the decided events are applied (or on the
    /// unchanged state, after a rejection).
    pub fn then_expect_state(self, check: impl FnOnce(&A)) {
        let mut state = self.state;
        if let Ok(events) = self.result {
            for event in events {
                state.apply(event);
            }
        }
        check(&state);
    }

    /// The raw outcome, for checks the other methods do not cover.
    pub fn outcome(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

/// Checks that an event is listed in `EVENT_TYPES` and round-trips through the codec.
#[track_caller]
fn check_event<E: DomainEvent + PartialEq + Debug>(event: &E) {
    let event_type = event.event_type();
    assert!(
        E::EVENT_TYPES.contains(&event_type),
        "event type {event_type:?} of {event:?} is missing from EVENT_TYPES {:?}",
        E::EVENT_TYPES
    );
    let codec = JsonCodec::new();
    let payload = match codec.encode(event) {
        Ok(payload) => payload,
        Err(e) => panic!("{event:?} does not encode: {e}"),
    };
    let record = RecordedEvent {
        event_id: Uuid::nil(),
        stream: match StreamId::new("testkit", "test") {
            Ok(stream) => stream,
            Err(e) => panic!("{e}"),
        },
        version: 1,
        position: Position::START,
        event_type: event_type.to_owned(),
        schema_version: event.schema_version(),
        recorded_at: SystemTime::UNIX_EPOCH,
        payload,
        metadata: Metadata::default(),
    };
    match codec.decode::<E>(&record) {
        Ok(decoded) => assert_eq!(&decoded, event, "the event changes through the JSON codec"),
        Err(e) => panic!("{event:?} does not decode after encoding: {e}"),
    }
}
