use cqrs_core::DomainEvent;

// On an enum, the keys go on the variants.
#[derive(DomainEvent)]
#[event(schema_version = 2)]
enum AccountEvent {
    Opened,
}

// Never on fields.
#[derive(DomainEvent)]
enum TransferEvent {
    Requested {
        #[event(name = "Amount")]
        amount: u64,
    },
}

#[derive(DomainEvent)]
struct Deposited(#[event(schema_version = 2)] u64);

// Each key once.
#[derive(DomainEvent)]
#[event(name = "Withdrawn")]
#[event(name = "MoneyWithdrawn")]
#[event(schema_version = 1, schema_version = 2)]
struct Withdrawn;

// Not a string, no value, no list.
#[derive(DomainEvent)]
enum Malformed {
    #[event(name = AccountClosed)]
    Unquoted,
    #[event(name)]
    NoValue,
    #[event]
    NoList,
}

fn main() {}
