//! A repository built from the aggregate type.

use crate::{Aggregate, Inspect, Repository};

/// Builds a [`Repository`] from the aggregate type, without a turbofish:
/// `Account::repository(store, services)` is `Repository::<Account, _>::new(store,
/// services)`.
///
/// Implemented for every [`Aggregate`].
///
/// # Examples
/// ```
/// use cqrs_core::{AggregateExt, InMemoryEventStore};
/// # use cqrs_core::Aggregate;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, cqrs_core::DomainEvent)]
/// # enum CounterEvent { Incremented }
/// # #[derive(Debug, Default, Serialize, Deserialize)]
/// # struct Counter(u64);
/// # impl Aggregate for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = ();
/// #     type Event = CounterEvent;
/// #     type Error = std::convert::Infallible;
/// #     type Services = ();
/// #     fn handle(&self, _: &(), _: &()) -> Result<Vec<CounterEvent>, Self::Error> {
/// #         Ok(vec![CounterEvent::Incremented])
/// #     }
/// #     fn apply(&mut self, _: CounterEvent) { self.0 += 1; }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let counters = Counter::repository(InMemoryEventStore::new(), ());
/// counters.execute("c1", &()).await?;
/// assert_eq!(counters.load("c1").await?.state.0, 1);
/// # Ok(())
/// # }
/// ```
pub trait AggregateExt: Aggregate {
    /// A repository of this aggregate over `store`, with the JSON codec, no snapshots
    /// and the default retry policy (see [`Repository::new`]).
    fn repository<S: Inspect + Clone + 'static>(
        store: S,
        services: Self::Services,
    ) -> Repository<Self, S>;
}

impl<A: Aggregate> AggregateExt for A {
    fn repository<S: Inspect + Clone + 'static>(
        store: S,
        services: A::Services,
    ) -> Repository<A, S> {
        Repository::new(store, services)
    }
}
