use cqrs_core::DomainEvent;

#[derive(DomainEvent)]
enum AccountEvent {
    #[event(name = "")]
    Opened,
}

#[derive(DomainEvent)]
#[event(name = "")]
struct Deposited;

fn main() {}
