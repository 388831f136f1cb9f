//! The transfer process manager (saga): a projection that sends commands.

use cqrs_core::{
    BoxError, BoxEventStore, CommandError, CommandOptions, DomainEvent, Envelope, Projection,
    Repository,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{
    Account, AccountCommand, AccountEvent, Transfer, TransferCommand, TransferEvent, TransferStatus,
};

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
    accounts: Repository<Account, BoxEventStore>,
    transfers: Repository<Transfer, BoxEventStore>,
}

impl TransferProcess {
    /// A process manager sending commands through these repositories.
    pub fn new(
        accounts: Repository<Account, BoxEventStore>,
        transfers: Repository<Transfer, BoxEventStore>,
    ) -> Self {
        TransferProcess {
            accounts,
            transfers,
        }
    }

    async fn react(&self, e: &Envelope<SagaEvent>) -> Result<(), BoxError> {
        match &e.event {
            SagaEvent::Transfer(TransferEvent::Requested { from, to, amount }) => {
                let transfer_id: Uuid = e.stream.id().parse()?;
                // Redelivered after the transfer ended (it failed on the debit): a debit
                // now could succeed and move money for a failed transfer. Do nothing.
                let transfer = self.transfers.load(&transfer_id.to_string()).await?;
                if matches!(
                    transfer.state.status,
                    TransferStatus::Completed | TransferStatus::Failed
                ) {
                    return Ok(());
                }
                let debit = AccountCommand::DebitForTransfer {
                    transfer_id,
                    to: to.clone(),
                    amount: *amount,
                };
                match self
                    .accounts
                    .execute_with(from, &debit, &CommandOptions::caused_by(e, "debit"))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(CommandError::Rejected(reason)) => {
                        let reason = format!("source account: {reason}");
                        self.finish(e, transfer_id, Some(reason)).await
                    }
                    Err(other) => Err(other.into()),
                }
            }
            SagaEvent::Account(AccountEvent::TransferDebited {
                transfer_id,
                to,
                amount,
            }) => {
                let source = e.stream.id();
                let refund_options = CommandOptions::caused_by(e, "refund");
                // Credit and refund exclude each other: if the refund was made (the credit
                // was refused on an earlier delivery), never credit now.
                if self
                    .accounts
                    .find_applied(source, &refund_options)
                    .await?
                    .is_some()
                {
                    return Ok(());
                }
                let credit = AccountCommand::CreditFromTransfer {
                    transfer_id: *transfer_id,
                    from: source.to_owned(),
                    amount: *amount,
                };
                match self
                    .accounts
                    .execute_with(to, &credit, &CommandOptions::caused_by(e, "credit"))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(CommandError::Rejected(reason)) => {
                        let refund = AccountCommand::RefundTransfer {
                            transfer_id: *transfer_id,
                            amount: *amount,
                            reason: format!("destination account {to}: {reason}"),
                        };
                        self.accounts
                            .execute_with(source, &refund, &refund_options)
                            .await?;
                        Ok(())
                    }
                    Err(other) => Err(other.into()),
                }
            }
            SagaEvent::Account(AccountEvent::TransferCredited { transfer_id, .. }) => {
                self.finish(e, *transfer_id, None).await
            }
            SagaEvent::Account(AccountEvent::TransferRefunded {
                transfer_id,
                reason,
                ..
            }) => self.finish(e, *transfer_id, Some(reason.clone())).await,
            _ => Ok(()),
        }
    }

    async fn finish(
        &self,
        e: &Envelope<SagaEvent>,
        transfer_id: Uuid,
        failure: Option<String>,
    ) -> Result<(), BoxError> {
        let command = match failure {
            None => TransferCommand::Complete,
            Some(reason) => TransferCommand::Fail { reason },
        };
        let options = CommandOptions::caused_by(e, "finish");
        let id = transfer_id.to_string();
        self.transfers.execute_with(&id, &command, &options).await?;
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
