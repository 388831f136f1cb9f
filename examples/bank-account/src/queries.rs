//! The read side of the bank: accounts, histories and counts, from the read model of
//! the store the bank was opened on.

use cqrs_core::Inspect;

use crate::app::{Bank, Views};
use crate::error::BankError;
use crate::projections::{ACCOUNTS, ACCOUNTS_TREE, AccountRow, HISTORY_TREE, HistoryRow};

impl Bank {
    /// An account's row in the read model.
    ///
    /// # Errors
    /// [`BankError::UnknownAccount`] if there is none.
    pub async fn balance(&self, id: &str) -> Result<AccountRow, BankError> {
        self.sync().await?;
        let row = match &self.views {
            Views::Memory(view, _) => view.account(id),
            Views::Sled(store) => {
                let tree = store
                    .read_model(ACCOUNTS, ACCOUNTS_TREE)
                    .map_err(BankError::store)?;
                match tree.get(id.as_bytes()).map_err(BankError::store)? {
                    Some(bytes) => Some(decode_row(&bytes)?),
                    None => None,
                }
            }
            Views::Postgres(store) => crate::postgres::account(store, id).await?,
        };
        row.ok_or_else(|| BankError::UnknownAccount(id.to_owned()))
    }

    /// An account's history from the read model, oldest first.
    ///
    /// # Errors
    /// [`BankError::UnknownAccount`] if there is none.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryRow>, BankError> {
        self.balance(id).await?;
        Ok(match &self.views {
            Views::Memory(view, _) => view.history(id),
            Views::Sled(store) => {
                let tree = store
                    .read_model(ACCOUNTS, HISTORY_TREE)
                    .map_err(BankError::store)?;
                let prefix = [id.as_bytes(), b"\0"].concat();
                let mut lines = Vec::new();
                for entry in tree.scan_prefix(&prefix) {
                    let (_, value) = entry.map_err(BankError::store)?;
                    lines.push(decode_row(&value)?);
                }
                lines
            }
            Views::Postgres(store) => crate::postgres::history(store, id).await?,
        })
    }

    /// Every account in the read model.
    ///
    /// # Errors
    /// [`BankError::Store`] if the read model cannot be read.
    pub async fn list_accounts(&self) -> Result<Vec<AccountRow>, BankError> {
        self.sync().await?;
        Ok(match &self.views {
            Views::Memory(view, _) => view.accounts(),
            Views::Sled(store) => {
                let tree = store
                    .read_model(ACCOUNTS, ACCOUNTS_TREE)
                    .map_err(BankError::store)?;
                let mut rows = Vec::new();
                for entry in tree.scan_prefix(b"") {
                    let (_, value) = entry.map_err(BankError::store)?;
                    rows.push(decode_row(&value)?);
                }
                rows
            }
            Views::Postgres(store) => crate::postgres::accounts(store).await?,
        })
    }

    /// Counts the events in the log.
    ///
    /// # Errors
    /// [`BankError::Store`] if the store fails.
    pub async fn event_count(&self) -> Result<u64, BankError> {
        self.store
            .count_events(cqrs_core::Position::START)
            .await
            .map_err(BankError::store)
    }
}

fn decode_row<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BankError> {
    serde_json::from_slice(bytes)
        .map_err(|e| BankError::Store(format!("a read-model row does not decode: {e}")))
}
