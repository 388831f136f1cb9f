use cqrs_core::DomainEvent;

#[derive(DomainEvent)]
enum AccountEvent {
    #[event(rename = "AccountOpened")]
    Opened,
    #[event(name = "MoneyDeposited", version = 2)]
    Deposited,
}

#[derive(DomainEvent)]
#[event(schema = 2)]
struct Closed;

fn main() {}
