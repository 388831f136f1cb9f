//! `#[derive(DomainEvent)]` (the `derive` feature): names, their order, overrides,
//! schema versions, and that what it derives passes the test kit and reaches the store.
//! The compile errors are tested in `cqrs-derive/tests/ui`.

use cqrs_core::testkit::AggregateTest;
use cqrs_core::{Aggregate, DomainEvent, EventLog, InMemoryEventStore, Repository};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

/// Every kind of variant, with and without overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    #[event(name = "AccountOpened")]
    Opened {
        owner: String,
    },
    #[event(name = "MoneyDeposited", schema_version = 3)]
    Deposited(u64),
    // Both keys, in two attributes.
    #[event(name = "MoneyWithdrawn")]
    #[event(schema_version = 2)]
    Withdrawn {
        amount: u64,
    },
    Closed,
    Frozen(String),
}

/// An enum whose variants set no schema version: the trait's default stays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum Plain {
    First,
    #[event(name = "Renamed")]
    Second,
    Third,
}

/// A struct named by its identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
struct PriceChanged {
    cents: u64,
}

/// A struct with both keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "StockCounted", schema_version = 4)]
struct Counted(u32);

/// An enum without variants: no names, and nothing to match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum Never {}

/// A raw identifier is named without its `r#`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[allow(non_camel_case_types)]
enum Keyword {
    r#type,
}

#[test]
fn names_are_listed_in_declaration_order() {
    assert_eq!(
        AccountEvent::EVENT_TYPES,
        [
            "AccountOpened",
            "MoneyDeposited",
            "MoneyWithdrawn",
            "Closed",
            "Frozen"
        ]
    );
    assert_eq!(Plain::EVENT_TYPES, ["First", "Renamed", "Third"]);
    assert_eq!(PriceChanged::EVENT_TYPES, ["PriceChanged"]);
    assert_eq!(Counted::EVENT_TYPES, ["StockCounted"]);
    assert!(Never::EVENT_TYPES.is_empty());
    assert_eq!(Keyword::EVENT_TYPES, ["type"]);
}

#[test]
fn each_value_has_its_variants_name() {
    let cases = [
        (
            AccountEvent::Opened {
                owner: "Ada".into(),
            },
            "AccountOpened",
        ),
        (AccountEvent::Deposited(5), "MoneyDeposited"),
        (AccountEvent::Withdrawn { amount: 2 }, "MoneyWithdrawn"),
        (AccountEvent::Closed, "Closed"),
        (AccountEvent::Frozen("audit".into()), "Frozen"),
    ];
    for (event, name) in cases {
        assert_eq!(event.event_type(), name, "{event:?}");
    }
    assert_eq!(Plain::Second.event_type(), "Renamed");
    assert_eq!(PriceChanged { cents: 1 }.event_type(), "PriceChanged");
    assert_eq!(Counted(7).event_type(), "StockCounted");
    assert_eq!(Keyword::r#type.event_type(), "type");
}

#[test]
fn schema_versions_default_to_one() {
    let cases = [
        (
            AccountEvent::Opened {
                owner: "Ada".into(),
            },
            1,
        ),
        (AccountEvent::Deposited(5), 3),
        (AccountEvent::Withdrawn { amount: 2 }, 2),
        (AccountEvent::Closed, 1),
        (AccountEvent::Frozen("audit".into()), 1),
    ];
    for (event, version) in cases {
        assert_eq!(event.schema_version(), version, "{event:?}");
    }
    for event in [Plain::First, Plain::Second, Plain::Third] {
        assert_eq!(event.schema_version(), 1, "{event:?}");
    }
    assert_eq!(PriceChanged { cents: 1 }.schema_version(), 1);
    assert_eq!(Counted(7).schema_version(), 4);
}

/// A derived impl behaves as the hand-written one it replaces.
#[test]
fn matches_the_hand_written_impl() {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum ByHand {
        Opened { owner: String },
        Deposited(u64),
    }
    impl DomainEvent for ByHand {
        const EVENT_TYPES: &'static [&'static str] = &["AccountOpened", "MoneyDeposited"];
        fn event_type(&self) -> &'static str {
            match self {
                ByHand::Opened { .. } => "AccountOpened",
                ByHand::Deposited(_) => "MoneyDeposited",
            }
        }
        fn schema_version(&self) -> u32 {
            match self {
                ByHand::Opened { .. } => 1,
                ByHand::Deposited(_) => 3,
            }
        }
    }
    assert_eq!(&AccountEvent::EVENT_TYPES[..2], ByHand::EVENT_TYPES);
    let pairs = [
        (
            AccountEvent::Opened {
                owner: "Ada".into(),
            },
            ByHand::Opened {
                owner: "Ada".into(),
            },
        ),
        (AccountEvent::Deposited(9), ByHand::Deposited(9)),
    ];
    for (derived, by_hand) in pairs {
        assert_eq!(derived.event_type(), by_hand.event_type());
        assert_eq!(derived.schema_version(), by_hand.schema_version());
    }
}

/// An account that records every variant, to run the derived impl through the test kit
/// (which checks each event's type against `EVENT_TYPES` and the JSON round trip) and a
/// repository.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the account is not open")]
struct NotOpen;

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = Vec<AccountEvent>; // record these
    type Event = AccountEvent;
    type Error = NotOpen;
    type Services = ();

    fn handle(&self, events: &Vec<AccountEvent>, _: &()) -> Result<Vec<AccountEvent>, NotOpen> {
        let opens = matches!(events.first(), Some(AccountEvent::Opened { .. }));
        if !self.open && !opens {
            return Err(NotOpen);
        }
        Ok(events.clone())
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited(amount) => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
            AccountEvent::Closed => self.open = false,
            AccountEvent::Frozen(_) => {}
        }
    }
}

fn every_variant() -> Vec<AccountEvent> {
    vec![
        AccountEvent::Opened {
            owner: "Ada".into(),
        },
        AccountEvent::Deposited(10),
        AccountEvent::Withdrawn { amount: 4 },
        AccountEvent::Frozen("audit".into()),
        AccountEvent::Closed,
    ]
}

#[test]
fn the_test_kit_accepts_the_derived_impl() {
    AggregateTest::<Account>::new(())
        .given(every_variant())
        .when(every_variant())
        .then_expect_events(every_variant())
        .then_expect_state(|account| assert_eq!(account.balance, 12));
}

#[tokio::test]
async fn the_store_keeps_the_derived_names_and_versions() {
    let store = InMemoryEventStore::new();
    let accounts = Repository::<Account, _>::new(store.clone(), ());
    accounts.execute("a1", &every_variant()).await.unwrap();

    let stream = Account::stream_id("a1").unwrap();
    let recorded: Vec<_> = store.read_stream(&stream, 1).try_collect().await.unwrap();
    let stored: Vec<_> = recorded
        .iter()
        .map(|record| (record.event_type.as_str(), record.schema_version))
        .collect();
    assert_eq!(
        stored,
        [
            ("AccountOpened", 1),
            ("MoneyDeposited", 3),
            ("MoneyWithdrawn", 2),
            ("Frozen", 1),
            ("Closed", 1)
        ]
    );
    assert_eq!(accounts.load("a1").await.unwrap().state.balance, 6);
}

/// A row projection's events: the tally's and the tombstone, in one derived enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum RowEvent {
    #[event(name = "MoneyDeposited")]
    Deposited { cents: u64 },
    #[event(name = "$stream-deleted")]
    Deleted(cqrs_core::StreamDeleted),
}

/// The derive writes `from_stream_deleted` for the `"$stream-deleted"` variant, so the
/// codec decodes a tombstone into it; a type without that variant has none.
#[tokio::test]
async fn a_derived_tombstone_variant_decodes_the_tombstone() {
    use cqrs_core::{Codec, JsonCodec, StreamLifecycle};

    assert_eq!(
        RowEvent::EVENT_TYPES,
        ["MoneyDeposited", cqrs_core::STREAM_DELETED]
    );
    let store = InMemoryEventStore::new();
    let accounts = Repository::<Account, _>::new(store.clone(), ());
    accounts.execute("a2", &every_variant()).await.unwrap();
    let stream = Account::stream_id("a2").unwrap();
    let expected = cqrs_core::ExpectedVersion::Exact(5);
    store.delete_stream(&stream, expected).await.unwrap();
    let records: Vec<_> = store.read_stream(&stream, 1).try_collect().await.unwrap();
    let decoded: RowEvent = JsonCodec::new().decode(&records[0]).unwrap();
    assert_eq!(decoded, RowEvent::Deleted(cqrs_core::StreamDeleted::new(5)));
    assert_eq!(decoded.event_type(), cqrs_core::STREAM_DELETED);
    assert!(matches!(
        JsonCodec::new().decode::<AccountEvent>(&records[0]),
        Err(cqrs_core::Error::UnknownEventType { .. })
    ));
    assert!(matches!(
        accounts.load("a2").await,
        Err(cqrs_core::Error::StreamDeleted { version: 6, .. })
    ));
}
