//! The statements read model in sled: one JSON document per account in the tree
//! `accounts` of the projection `statements`, written in the inbox's transaction.

use cqrs_core::{BoxError, Envelope, Projection, RecordedEvent};
use cqrs_sled::{ReadModelTx, SledEventStore};

use crate::events::AccountEvent;
use crate::service::CONSUMER;
use crate::statement::Statement;
use crate::{Error, Result};

/// The tree of statements: key the account id, value the [`Statement`] as JSON.
const ACCOUNTS: &str = "accounts";

/// The projection the consumer applies the bank's events to, on sled.
#[derive(Debug, Default)]
pub struct SledStatements;

impl Projection<ReadModelTx> for SledStatements {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        CONSUMER
    }

    fn wants(&self, record: &RecordedEvent) -> bool {
        crate::events::is_account_event(record)
    }

    async fn apply(
        &mut self,
        tx: &mut ReadModelTx,
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for event in batch {
            let key = event.stream.id().as_bytes();
            if let AccountEvent::Deleted(_) = event.event {
                tx.remove(ACCOUNTS, key);
                continue;
            }
            let old = match tx.get(ACCOUNTS, key)? {
                Some(bytes) => Some(serde_json::from_slice(&bytes)?),
                None => None,
            };
            let new = Statement::apply(old, event);
            tx.insert(ACCOUNTS, key, &serde_json::to_vec(&new)?);
        }
        Ok(())
    }
}

/// The statement of `account` in `store`, if the service has seen the account.
///
/// # Errors
/// [`Error::Store`] if sled fails or the stored statement is damaged.
pub fn statement(store: &SledEventStore, account: &str) -> Result<Option<Statement>> {
    let context = || format!("reading the statement of {account:?}");
    let tree = store
        .read_model(CONSUMER, ACCOUNTS)
        .map_err(|e| Error::store(context(), e))?;
    let bytes = tree
        .get(account.as_bytes())
        .map_err(|e| Error::store(context(), e))?;
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let statement = serde_json::from_slice(&bytes).map_err(|e| Error::store(context(), e))?;
    Ok(Some(statement))
}
