//! The small bank that pages 2 and 4 build step by step, for the examples that continue
//! it: the code of `docs/02-getting-started.md` (sections 2, 3, 4 and 9) and the
//! process manager of `docs/04-projections.md`.
//!
//! Each page compiles its own copy of these types where it defines them; the later
//! examples start with `# use cqrs_docs::getting_started::*;`. When a page's definition
//! changes, change it here too. Fields are `pub` here only because the examples that
//! read them are other crates.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use cqrs_core::{
    Aggregate, BoxError, CommandOptions, DomainEvent, Envelope, InMemoryEventStore, Projection,
    Repository,
};
use serde::{Deserialize, Serialize};

/// What can happen to an account (page 2, section 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
pub enum AccountEvent {
    /// The account was opened.
    #[event(name = "AccountOpened")]
    Opened {
        /// The owner's name.
        owner: String,
    },
    /// Money was deposited.
    #[event(name = "MoneyDeposited")]
    Deposited {
        /// The amount.
        amount: u64,
    },
    /// Money was withdrawn.
    #[event(name = "MoneyWithdrawn")]
    Withdrawn {
        /// The amount.
        amount: u64,
    },
}

/// What a caller asks an account to do (page 2, section 3).
#[derive(Debug)]
pub enum AccountCommand {
    /// Open the account.
    Open {
        /// The owner's name.
        owner: String,
    },
    /// Deposit money.
    Deposit {
        /// The amount.
        amount: u64,
    },
    /// Withdraw money.
    Withdraw {
        /// The amount.
        amount: u64,
    },
}

/// Why an account refuses a command (page 2, section 3).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    /// `Open` on an open account.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Anything but `Open` on an account that is not open.
    #[error("the account is not open")]
    NotOpen,
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: balance {balance}, asked for {asked}")]
    InsufficientFunds {
        /// The balance.
        balance: u64,
        /// The amount asked for.
        asked: u64,
    },
}

/// The account aggregate (page 2, section 4).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    /// Whether the account was opened.
    pub open: bool,
    /// The balance.
    pub balance: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    fn handle(&self, command: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            Open { owner } => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            _ if !self.open => Err(AccountError::NotOpen),
            Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
            Withdraw { amount } if *amount > self.balance => Err(AccountError::InsufficientFunds {
                balance: self.balance,
                asked: *amount,
            }),
            Withdraw { amount } => Ok(vec![AccountEvent::Withdrawn { amount: *amount }]),
        }
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

/// Every account's balance, kept by a projection (page 2, section 9): a handle that
/// readers clone.
#[derive(Debug, Clone, Default)]
pub struct Balances(Arc<RwLock<HashMap<String, u64>>>);

impl Balances {
    /// The balance of `account` (0 if it is unknown).
    pub fn balance(&self, account: &str) -> u64 {
        let balances = self.0.read().unwrap_or_else(PoisonError::into_inner);
        balances.get(account).copied().unwrap_or(0)
    }
}

impl Projection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let mut balances = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for envelope in batch {
            let balance = balances.entry(envelope.stream.id().to_owned()).or_default();
            match envelope.event {
                AccountEvent::Opened { .. } => {}
                AccountEvent::Deposited { amount } => *balance += amount,
                AccountEvent::Withdrawn { amount } => *balance -= amount,
            }
        }
        Ok(())
    }

    async fn reset(&mut self, _: &mut ()) -> Result<(), BoxError> {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }
}

/// Deposits a bonus into every account that opens (page 4, "Process managers").
#[derive(Debug)]
pub struct WelcomeBonus {
    /// The repository the bonus is deposited through.
    pub accounts: Repository<Account, InMemoryEventStore>,
}

impl Projection for WelcomeBonus {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "welcome-bonus"
    }

    async fn apply(
        &mut self,
        _: &mut (),
        batch: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        for envelope in batch {
            if let AccountEvent::Opened { .. } = envelope.event {
                let options = CommandOptions::new()
                    .with_command_id(envelope.event_id)
                    .with_correlation_id(
                        envelope
                            .metadata
                            .correlation_id
                            .unwrap_or(envelope.event_id),
                    );
                let bonus = AccountCommand::Deposit { amount: 10 };
                self.accounts
                    .execute_with(envelope.stream.id(), &bonus, &options)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Where `main` of page 2, section 6 leaves the bank: an in-memory store and the accounts
/// repository over it, with `acc-1` opened and 100 deposited.
///
/// # Errors
/// If a command fails (it does not).
pub async fn main_so_far()
-> Result<(InMemoryEventStore, Repository<Account, InMemoryEventStore>), BoxError> {
    let store = InMemoryEventStore::new();
    let accounts = Repository::<Account, _>::new(store.clone(), ());
    accounts
        .execute(
            "acc-1",
            &AccountCommand::Open {
                owner: "ada".into(),
            },
        )
        .await?;
    accounts
        .execute("acc-1", &AccountCommand::Deposit { amount: 100 })
        .await?;
    Ok((store, accounts))
}
