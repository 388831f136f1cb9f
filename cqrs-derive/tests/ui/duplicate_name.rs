use cqrs_core::DomainEvent;

#[derive(DomainEvent)]
enum AccountEvent {
    #[event(name = "MoneyDeposited")]
    Deposited,
    #[event(name = "MoneyDeposited")]
    Credited,
    // Its default name is taken by the override below.
    Closed,
    #[event(name = "Closed")]
    Shut,
}

fn main() {}
