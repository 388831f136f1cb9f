use cqrs_core::DomainEvent;

#[derive(DomainEvent)]
enum AccountEvent {
    #[event(schema_version = "2")]
    Quoted,
    #[event(schema_version = 1.5)]
    Fraction,
    #[event(schema_version = two)]
    Word,
    #[event(schema_version = -1)]
    Negative,
    #[event(schema_version = 0)]
    Zero,
    #[event(schema_version = 4294967296)]
    TooLarge,
}

#[derive(DomainEvent)]
#[event(schema_version = "1")]
struct Deposited;

fn main() {}
