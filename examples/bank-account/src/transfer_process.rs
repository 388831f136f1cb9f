//! The transfer process manager (saga): a projection that sends commands.

use cqrs_core::{
    BoxError, BoxEventStore, CommandError, CommandOptions, DomainEvent, Envelope, Projection,
    Repository,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
        let step = |name| CommandOptions::caused_by(e, name);
        match e.event.clone() {
            SagaEvent::Transfer(TransferEvent::Requested { from, to, amount }) => {
                let transfer_id = e.stream.id().parse()?;
                // Redelivered after the transfer ended (it failed on the debit): a debit
                // now could succeed and move money for a failed transfer. Do nothing.
                let transfer = self.transfers.load(e.stream.id()).await?.state;
                if transfer.status != TransferStatus::Pending {
                    return Ok(());
                }
                let debit = Cmd::DebitForTransfer {
                    transfer_id,
                    to,
                    amount,
                };
                match self
                    .accounts
                    .execute_with(&from, &debit, &step("debit"))
                    .await
                {
                    Err(CommandError::Rejected(reason)) => {
                        let reason = format!("source account: {reason}");
                        self.finish(e, transfer_id, TransferCommand::Fail(reason))
                            .await
                    }
                    done => Ok(done.map(drop)?),
                }
            }
            SagaEvent::Account(AccountEvent::TransferDebited {
                transfer_id,
                to,
                amount,
            }) => {
                let from = e.stream.id().to_owned();
                // Credit and refund exclude each other: if the refund was made (the credit
                // was refused on an earlier delivery), never credit now.
                if self
                    .accounts
                    .find_applied(&from, &step("refund"))
                    .await?
                    .is_some()
                {
                    return Ok(());
                }
                let credit = Cmd::CreditFromTransfer {
                    transfer_id,
                    from: from.clone(),
                    amount,
                };
                match self
                    .accounts
                    .execute_with(&to, &credit, &step("credit"))
                    .await
                {
                    Err(CommandError::Rejected(reason)) => {
                        let reason = format!("destination account {to}: {reason}");
                        let refund = Cmd::RefundTransfer {
                            transfer_id,
                            amount,
                            reason,
                        };
                        Ok(self
                            .accounts
                            .execute_with(&from, &refund, &step("refund"))
                            .await
                            .map(drop)?)
                    }
                    done => Ok(done.map(drop)?),
                }
            }
            SagaEvent::Account(AccountEvent::TransferCredited { transfer_id, .. }) => {
                self.finish(e, transfer_id, TransferCommand::Complete).await
            }
            SagaEvent::Account(AccountEvent::TransferRefunded {
                transfer_id,
                reason,
                ..
            }) => {
                self.finish(e, transfer_id, TransferCommand::Fail(reason))
                    .await
            }
            _ => Ok(()),
        }
    }

    async fn finish(
        &self,
        e: &Envelope<SagaEvent>,
        transfer_id: Uuid,
        command: TransferCommand,
    ) -> Result<(), BoxError> {
        let options = CommandOptions::caused_by(e, "finish");
        self.transfers
            .execute_with(&transfer_id.to_string(), &command, &options)
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
