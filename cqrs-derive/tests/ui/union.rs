use cqrs_core::DomainEvent;

#[derive(DomainEvent)]
union Amount {
    cents: u64,
    units: f64,
}

fn main() {}
