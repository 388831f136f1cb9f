//! The transfer process manager (saga): a projection that sends commands.

use cqrs_core::{
    BoxError, BoxEventStore, CommandError, CommandOptions, DomainEvent, Envelope, Projection,
    Repository,
};
use serde::{Deserialize, Serialize};

use crate::domain::{Account, AccountCommand as Cmd, AccountEvent, Transfer};
use crate::domain::{TransferCommand, TransferEvent, TransferStatus};

/// The name of the transfer process manager's projection.
pub const TRANSFERS: &str = "transfers";

/// The events the transfer process manager reacts to, from both aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SagaEvent {
    /// An account's event.
    Account(AccountEvent),
    /// A transfer's event.
    Transfer(TransferEvent),
}

impl DomainEvent for SagaEvent {
    const EVENT_TYPES: &'static [&'static str] = &[
        "TransferRequested",
        "TransferDebited",
        "TransferCredited",
        "TransferRefunded",
    ];

    fn event_type(&self) -> &'static str {
        match self {
            SagaEvent::Account(e) => e.event_type(),
            SagaEvent::Transfer(e) => e.event_type(),
        }
    }
}

/// The transfer process manager (saga): debit the source, credit the destination, and if
/// the credit is refused, refund the source; then record the transfer's outcome.
///
/// It is a projection that sends commands. Each command's id is derived from the event
/// that triggered it, so when an event is delivered again (at-least-once), the command is
/// recognised as already applied and nothing changes twice.
#[derive(Debug, Clone)]
pub struct TransferProcess {
    /// Where it sends debits, credits and refunds.
    pub accounts: Repository<Account, BoxEventStore>,
    /// Where it records outcomes.
    pub transfers: Repository<Transfer, BoxEventStore>,
}

impl TransferProcess {
    async fn react(&self, e: &Envelope<SagaEvent>) -> Result<(), BoxError> {
        use {AccountEvent as A, CommandError::Rejected, TransferCommand as T};
        let (step, source) = (|name| CommandOptions::caused_by(e, name), e.stream.id());
        let accounts = &self.accounts;
        // The command that finishes the transfer, if this event calls for one.
        let (id, command) = match e.event.clone() {
            SagaEvent::Transfer(TransferEvent::Requested { from, to, amount }) => {
                // Redelivered after the transfer ended (it failed on the debit): a debit
                // now could succeed and move money for a failed transfer. Do nothing.
                if self.transfers.load(source).await?.state.status != TransferStatus::Pending {
                    return Ok(());
                }
                let debit = Cmd::DebitForTransfer(source.parse()?, to, amount);
                match accounts.execute_with(&from, &debit, &step("debit")).await {
                    Err(Rejected(reason)) => (
                        source.to_owned(),
                        T::Fail(format!("source account: {reason}")),
                    ),
                    done => return Ok(done.map(drop)?),
                }
            }
            SagaEvent::Account(A::TransferDebited {
                transfer_id,
                to,
                amount,
            }) => {
                // Credit and refund exclude each other: if the refund was made (the credit
                // was refused on an earlier delivery), never credit now.
                let refunded = accounts.find_applied(source, &step("refund")).await?;
                if refunded.is_some() {
                    return Ok(());
                }
                let credit = Cmd::CreditFromTransfer(transfer_id, source.to_owned(), amount);
                let reason = match accounts.execute_with(&to, &credit, &step("credit")).await {
                    Err(Rejected(reason)) => format!("destination account {to}: {reason}"),
                    done => return Ok(done.map(drop)?),
                };
                let refund = Cmd::RefundTransfer(transfer_id, amount, reason);
                accounts
                    .execute_with(source, &refund, &step("refund"))
                    .await?;
                return Ok(());
            }
            SagaEvent::Account(A::TransferCredited { transfer_id, .. }) => {
                (transfer_id.to_string(), T::Complete)
            }
            SagaEvent::Account(A::TransferRefunded {
                transfer_id,
                reason,
                ..
            }) => (transfer_id.to_string(), T::Fail(reason)),
            _ => return Ok(()),
        };
        let transfers = &self.transfers;
        transfers
            .execute_with(&id, &command, &step("finish"))
            .await?;
        Ok(())
    }
}

impl Projection for TransferProcess {
    type Event = SagaEvent;

    fn name(&self) -> &str {
        TRANSFERS
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<SagaEvent>]) -> Result<(), BoxError> {
        for e in batch {
            self.react(e).await?;
        }
        Ok(())
    }
}
