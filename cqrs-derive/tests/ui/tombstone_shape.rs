use cqrs_core::DomainEvent;

#[derive(DomainEvent)]
enum AccountEvent {
    Opened,
    // The tombstone's variant must hold one `StreamDeleted`.
    #[event(name = "$stream-deleted")]
    Deleted { last_version: u64 },
}

fn main() {}
