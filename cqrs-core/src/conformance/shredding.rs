//! Crypto-shredding over a backend: what [`Shredded`] promises, checked
//! against the bytes the backend keeps.
//!
//! Backends run [`forget_erases_personal_data`] with a function that returns every byte
//! their database holds (the files of a sled directory, a `pg_dump` of a PostgreSQL
//! schema); the in-memory store runs it with the `Debug` text of its state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Aggregate, BoxError, CommandError, DomainEvent, Envelope, Error, EventStore, Forgotten,
    KeyState, KeyStore, Personal, Projection, ProjectionRunner, Repository, Shredded,
};

/// A customer whose name is personal data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// The name, once registered.
    pub name: Option<Personal<String>>,
    /// Visits after the registration.
    pub visits: u32,
}

/// A customer's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CustomerEvent {
    /// Registered with a name.
    Registered {
        /// The name, personal data of the customer.
        name: Personal<String>,
    },
    /// Visited.
    Visited,
}

impl DomainEvent for CustomerEvent {
    const EVENT_TYPES: &'static [&'static str] = &["CustomerRegistered", "CustomerVisited"];

    fn event_type(&self) -> &'static str {
        match self {
            CustomerEvent::Registered { .. } => "CustomerRegistered",
            CustomerEvent::Visited => "CustomerVisited",
        }
    }
}

/// A customer's commands.
#[derive(Debug, Clone)]
pub enum CustomerCommand {
    /// Register: the subject id and the name.
    Register(String, String),
    /// Visit.
    Visit,
}

/// The customer aggregate refuses nothing.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl Aggregate for Customer {
    const TYPE: &'static str = "shredding-customer";
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = Never;
    type Services = ();

    fn handle(&self, command: &CustomerCommand, _: &()) -> Result<Vec<CustomerEvent>, Never> {
        Ok(vec![match command {
            CustomerCommand::Register(subject, name) => CustomerEvent::Registered {
                name: Personal::new(subject.clone(), name.clone()),
            },
            CustomerCommand::Visit => CustomerEvent::Visited,
        }])
    }

    fn apply(&mut self, event: CustomerEvent) {
        match event {
            CustomerEvent::Registered { name } => self.name = Some(name),
            CustomerEvent::Visited => self.visits += 1,
        }
    }
}

/// A read model of the names, by customer id: `None` once erased.
#[derive(Debug, Clone, Default)]
pub struct Names(pub Arc<Mutex<BTreeMap<String, Option<String>>>>);

impl Names {
    fn get(&self, id: &str) -> Option<Option<String>> {
        let names = self.0.lock().unwrap_or_else(|p| p.into_inner());
        names.get(id).cloned()
    }
}

impl Projection for Names {
    type Event = CustomerEvent;

    fn name(&self) -> &str {
        "shredding-names"
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<CustomerEvent>],
    ) -> Result<(), BoxError> {
        let mut names = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for e in batch {
            if let CustomerEvent::Registered { name } = &e.event {
                names.insert(e.stream.id().to_owned(), name.value().cloned());
            }
        }
        Ok(())
    }

    async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// How `needle` appears in `haystack`, if it does: as raw bytes, in lowercase hex (a
/// `bytea` column in a `pg_dump`) or in base64 (standalone). The plaintext scans use it.
pub fn find_stored(haystack: &[u8], needle: &[u8]) -> Option<&'static str> {
    use base64::Engine;
    let hex: String = needle.iter().map(|b| format!("{b:02x}")).collect();
    let base64 = base64::engine::general_purpose::STANDARD.encode(needle);
    [
        ("raw", needle.to_vec()),
        ("hex", hex.into_bytes()),
        ("base64", base64.into_bytes()),
    ]
    .into_iter()
    .find(|(_, form)| contains(haystack, form))
    .map(|(name, _)| name)
}

/// Two customers with unique names and snapshots; forgetting one erases its name from
/// every read (loads, the log, a rebuilt read model), stops its snapshot from being used,
/// refuses new personal data for it, and leaves the other untouched; forgetting an
/// unknown subject is a typed error that writes nothing; and no name ever appears in the
/// bytes `dump` returns (the backend's database). With `key_gone`, the forgotten key's
/// bytes must not appear there either (true where the backend deletes in place, false
/// where a log-structured file may keep old values until it is compacted).
///
/// # Panics
/// When the store breaks one of these promises.
pub async fn forget_erases_personal_data<S, K, D>(store: Shredded<S, K>, dump: D, key_gone: bool)
where
    S: EventStore + Clone + 'static,
    K: KeyStore + Clone + 'static,
    D: AsyncFn() -> Vec<u8>,
{
    let run = Uuid::new_v4().simple().to_string();
    let (ada, bob) = (format!("ada-{run}"), format!("bob-{run}"));
    let (ada_name, bob_name) = (format!("Ada Shredded {run}"), format!("Bob Kept {run}"));
    let customers = Repository::<Customer, _>::new(store.clone(), ())
        .with_snapshots(crate::SnapshotPolicy::Never);
    for (id, name) in [(&ada, &ada_name), (&bob, &bob_name)] {
        let register = CustomerCommand::Register(id.clone(), name.clone());
        customers.execute(id, &register).await.expect("register");
        customers
            .execute(id, &CustomerCommand::Visit)
            .await
            .expect("visit");
        customers.snapshot_now(id).await.expect("snapshot");
    }
    let snapshots = Repository::<Customer, _>::new(store.clone(), ())
        .with_snapshots(crate::SnapshotPolicy::EveryEvents(1000))
        .with_background_snapshots(false);

    // Plaintext never reaches the backend.
    let bytes = dump().await;
    for name in [&ada_name, &bob_name] {
        let found = find_stored(&bytes, name.as_bytes());
        assert_eq!(found, None, "{name} is stored in clear");
    }
    let loaded = snapshots.load(&ada).await.expect("load");
    assert_eq!(
        loaded.snapshot_version,
        Some(2),
        "the sealed snapshot is used"
    );
    let ada_known = Some(Personal::new(ada.clone(), ada_name.clone()));
    assert_eq!(loaded.state.name, ada_known);
    let names = Names::default();
    let mut runner = ProjectionRunner::new(store.clone(), names.clone());
    runner.catch_up().await.expect("projection");
    assert_eq!(names.get(&ada), Some(Some(ada_name.clone())));

    let KeyState::Active(ada_key) = store.shredder().keys().load_key(&ada).await.expect("key")
    else {
        panic!("{ada} has no key");
    };

    // Forget: once, again (idempotent), and an unknown subject.
    assert_eq!(store.forget(&ada).await.expect("forget"), Forgotten::Now);
    assert_eq!(store.forget(&ada).await.expect("again"), Forgotten::Already);
    let unknown = format!("nobody-{run}");
    match store.forget(&unknown).await {
        Err(Error::UnknownSubject { subject }) => assert_eq!(subject, unknown),
        other => panic!("forgetting an unknown subject: {other:?}"),
    }
    let keys = store.shredder().keys();
    let missing = keys.load_key(&unknown).await.expect("load");
    assert_eq!(missing, KeyState::Missing, "nothing written");

    // Every read still works; ada's name reads erased, bob's as it was.
    let erased = Some(Personal::Erased {
        subject: ada.clone(),
    });
    let loaded = snapshots.load(&ada).await.expect("load after forget");
    assert_eq!(loaded.state.name, erased);
    assert_eq!(loaded.state.visits, 1);
    assert_eq!(
        loaded.snapshot_version, None,
        "the snapshot holding ada is not used"
    );
    assert_eq!(
        loaded.snapshot_ignored,
        Some(crate::SnapshotIgnored::Erased { version: 2 }),
        "the load says why"
    );
    // That load replaced the snapshot (the repository takes snapshots): the next one
    // uses a snapshot without ada's sealed name.
    let loaded = snapshots.load(&ada).await.expect("load after the repair");
    assert_eq!(
        loaded.snapshot_version,
        Some(2),
        "a new snapshot replaced it"
    );
    assert_eq!(loaded.state.name, erased);
    let loaded = snapshots.load(&bob).await.expect("load bob");
    assert_eq!(
        loaded.snapshot_version,
        Some(2),
        "bob's snapshot is untouched"
    );
    let bob_known = Some(Personal::new(bob.clone(), bob_name.clone()));
    assert_eq!(loaded.state.name, bob_known);

    // A rebuild gives a read model without ada's name.
    let mut rebuild = ProjectionRunner::new(store.clone(), names.clone());
    rebuild.rebuild(|_| {}).await.expect("rebuild");
    assert_eq!(names.get(&ada), Some(None));
    assert_eq!(names.get(&bob), Some(Some(bob_name.clone())));

    // New personal data for ada is refused, and nothing is written.
    let again = CustomerCommand::Register(ada.clone(), ada_name.clone());
    let other = format!("carol-{run}");
    match customers.execute(&other, &again).await {
        Err(CommandError::Invalid(Error::SubjectForgotten { subject })) => {
            assert_eq!(subject, ada)
        }
        other => panic!("personal data of a forgotten subject: {other:?}"),
    }
    assert_eq!(customers.load(&other).await.expect("load").version, 0);

    let bytes = dump().await;
    for name in [&ada_name, &bob_name] {
        let found = find_stored(&bytes, name.as_bytes());
        assert_eq!(found, None, "{name} is stored in clear");
    }
    if key_gone {
        let found = find_stored(&bytes, ada_key.as_bytes());
        assert_eq!(found, None, "the forgotten key is still stored");
    }
}
