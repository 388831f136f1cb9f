//! The two aggregates: an account, and a transfer between two accounts.

use cqrs_core::Aggregate;
use serde::{Deserialize, Serialize};

use super::{AccountCommand, AccountEvent, Cents, TransferCommand, TransferEvent};

impl AccountStatus {
    /// The status as it appears in JSON: `unknown`, `open`, `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Unknown => "unknown",
            AccountStatus::Open => "open",
            AccountStatus::Closed => "closed",
        }
    }
}

impl TransferStatus {
    /// The status as it appears in JSON: `unknown`, `pending`, `completed`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Unknown => "unknown",
            TransferStatus::Pending => "pending",
            TransferStatus::Completed => "completed",
            TransferStatus::Failed => "failed",
        }
    }
}

/// Where an account is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Never opened: the account does not exist.
    #[default]
    Unknown,
    /// Open.
    Open,
    /// Closed.
    Closed,
}

/// A bank account: the consistency boundary for its balance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Open, closed, or never opened.
    pub status: AccountStatus,
    /// The owner's name.
    pub owner: String,
    /// The balance in cents (never negative).
    pub balance: i64,
}

/// Why an account refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// `open` on an account that exists.
    #[error("account already exists")]
    AlreadyExists,
    /// Any command but `open` on an account that was never opened.
    #[error("unknown account")]
    Unknown,
    /// A command on a closed account.
    #[error("account is closed")]
    Closed,
    /// A withdrawal or debit larger than the balance.
    #[error("insufficient funds: balance {}, requested {}", super::format_cents(*.balance), .requested)]
    InsufficientFunds {
        /// The balance in cents.
        balance: i64,
        /// The amount asked for.
        requested: Cents,
    },
    /// `close` with money left.
    #[error("balance is not zero: {}", super::format_cents(*.0))]
    BalanceNotZero(i64),
    /// An owner name that is empty or too long.
    #[error("the owner name must be 1 to 200 characters")]
    InvalidOwner,
}

impl Account {
    fn must_be_open(&self) -> Result<(), AccountError> {
        match self.status {
            AccountStatus::Open => Ok(()),
            AccountStatus::Unknown => Err(AccountError::Unknown),
            AccountStatus::Closed => Err(AccountError::Closed),
        }
    }

    fn must_cover(&self, amount: Cents) -> Result<(), AccountError> {
        if amount.get() > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: amount,
            });
        }
        Ok(())
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    fn handle(&self, command: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, AccountError> {
        let event = match command {
            AccountCommand::Open { owner } => {
                if self.status != AccountStatus::Unknown {
                    return Err(AccountError::AlreadyExists);
                }
                if owner.trim().is_empty() || owner.chars().count() > 200 {
                    return Err(AccountError::InvalidOwner);
                }
                AccountEvent::Opened {
                    owner: owner.clone(),
                }
            }
            AccountCommand::Deposit { amount } => {
                self.must_be_open()?;
                AccountEvent::Deposited { amount: *amount }
            }
            AccountCommand::Withdraw { amount } => {
                self.must_be_open()?;
                self.must_cover(*amount)?;
                AccountEvent::Withdrawn { amount: *amount }
            }
            AccountCommand::Close => {
                self.must_be_open()?;
                if self.balance != 0 {
                    return Err(AccountError::BalanceNotZero(self.balance));
                }
                AccountEvent::Closed
            }
            AccountCommand::DebitForTransfer {
                transfer_id,
                to,
                amount,
            } => {
                self.must_be_open()?;
                self.must_cover(*amount)?;
                AccountEvent::TransferDebited {
                    transfer_id: *transfer_id,
                    to: to.clone(),
                    amount: *amount,
                }
            }
            AccountCommand::CreditFromTransfer {
                transfer_id,
                from,
                amount,
            } => {
                self.must_be_open()?;
                AccountEvent::TransferCredited {
                    transfer_id: *transfer_id,
                    from: from.clone(),
                    amount: *amount,
                }
            }
            AccountCommand::RefundTransfer {
                transfer_id,
                amount,
                reason,
            } => {
                // Money that left for a failed transfer always comes back, even to an
                // account closed in the meantime: it is never lost.
                if self.status == AccountStatus::Unknown {
                    return Err(AccountError::Unknown);
                }
                AccountEvent::TransferRefunded {
                    transfer_id: *transfer_id,
                    amount: *amount,
                    reason: reason.clone(),
                }
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: AccountEvent) {
        self.balance += event.balance_change();
        match event {
            AccountEvent::Opened { owner } => {
                self.status = AccountStatus::Open;
                self.owner = owner;
            }
            AccountEvent::Closed => self.status = AccountStatus::Closed,
            _ => {}
        }
    }
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Not requested.
    #[default]
    Unknown,
    /// Requested, not finished.
    Pending,
    /// The money arrived.
    Completed,
    /// It failed (and the source, if debited, was refunded).
    Failed,
}

/// A transfer between two accounts, driven by the transfer process manager.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Where it is.
    pub status: TransferStatus,
    /// The source account.
    pub from: String,
    /// The destination account.
    pub to: String,
    /// How much, in cents.
    pub amount: i64,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// Why a transfer refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// A transfer from an account to itself.
    #[error("cannot transfer from an account to itself")]
    SameAccount,
    /// `request` on a transfer that exists.
    #[error("transfer already requested")]
    AlreadyRequested,
    /// `complete`/`fail` on a transfer that was never requested.
    #[error("unknown transfer")]
    Unknown,
    /// `complete`/`fail` on a finished transfer.
    #[error("transfer already finished")]
    Finished,
}

impl Aggregate for Transfer {
    const TYPE: &'static str = "transfer";
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Error = TransferError;
    type Services = ();

    fn handle(
        &self,
        command: &TransferCommand,
        _: &(),
    ) -> Result<Vec<TransferEvent>, TransferError> {
        let event = match command {
            TransferCommand::Request { from, to, amount } => {
                if self.status != TransferStatus::Unknown {
                    return Err(TransferError::AlreadyRequested);
                }
                if from == to {
                    return Err(TransferError::SameAccount);
                }
                TransferEvent::Requested {
                    from: from.clone(),
                    to: to.clone(),
                    amount: *amount,
                }
            }
            TransferCommand::Complete | TransferCommand::Fail { .. } => {
                match self.status {
                    TransferStatus::Unknown => return Err(TransferError::Unknown),
                    TransferStatus::Completed | TransferStatus::Failed => {
                        return Err(TransferError::Finished);
                    }
                    TransferStatus::Pending => {}
                }
                match command {
                    TransferCommand::Fail { reason } => TransferEvent::Failed {
                        reason: reason.clone(),
                    },
                    _ => TransferEvent::Completed,
                }
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: TransferEvent) {
        match event {
            TransferEvent::Requested { from, to, amount } => {
                self.status = TransferStatus::Pending;
                self.from = from;
                self.to = to;
                self.amount = amount.get();
            }
            TransferEvent::Completed => self.status = TransferStatus::Completed,
            TransferEvent::Failed { reason } => {
                self.status = TransferStatus::Failed;
                self.failure = Some(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_core::testkit::AggregateTest;
    use uuid::Uuid;

    use super::*;

    fn cents(c: i64) -> Cents {
        Cents::new(c).unwrap()
    }

    fn opened() -> AccountEvent {
        AccountEvent::Opened {
            owner: "ada".into(),
        }
    }

    fn account() -> AggregateTest<Account> {
        AggregateTest::new(())
    }

    #[test]
    fn open_deposit_withdraw() {
        account()
            .given_no_previous_events()
            .when(AccountCommand::Open {
                owner: "ada".into(),
            })
            .then_expect_events([opened()]);
        account()
            .given([opened()])
            .when(AccountCommand::Deposit { amount: cents(500) })
            .then_expect_events([AccountEvent::Deposited { amount: cents(500) }])
            .then_expect_state(|a| assert_eq!(a.balance, 500));
        account()
            .given([opened(), AccountEvent::Deposited { amount: cents(500) }])
            .when(AccountCommand::Withdraw { amount: cents(200) })
            .then_expect_events([AccountEvent::Withdrawn { amount: cents(200) }])
            .then_expect_state(|a| assert_eq!(a.balance, 300));
    }

    #[test]
    fn rejections() {
        account()
            .given([opened()])
            .when(AccountCommand::Open {
                owner: "bob".into(),
            })
            .then_expect_error_message("account already exists");
        account()
            .given_no_previous_events()
            .when(AccountCommand::Deposit { amount: cents(1) })
            .then_expect_error_message("unknown account");
        account()
            .given([opened(), AccountEvent::Deposited { amount: cents(100) }])
            .when(AccountCommand::Withdraw { amount: cents(101) })
            .then_expect_error_message("insufficient funds: balance 1.00, requested 1.01");
        account()
            .given([opened(), AccountEvent::Deposited { amount: cents(100) }])
            .when(AccountCommand::Close)
            .then_expect_error_message("balance is not zero: 1.00");
        account()
            .given([opened(), AccountEvent::Closed])
            .when(AccountCommand::Deposit { amount: cents(1) })
            .then_expect_error_message("account is closed");
        account()
            .given_no_previous_events()
            .when(AccountCommand::Open { owner: "  ".into() })
            .then_expect_error_message("the owner name must be 1 to 200 characters");
    }

    #[test]
    fn close_with_zero_balance() {
        account()
            .given([
                opened(),
                AccountEvent::Deposited { amount: cents(100) },
                AccountEvent::Withdrawn { amount: cents(100) },
            ])
            .when(AccountCommand::Close)
            .then_expect_events([AccountEvent::Closed])
            .then_expect_state(|a| assert_eq!(a.status, AccountStatus::Closed));
    }

    #[test]
    fn transfer_legs_and_refund() {
        let transfer_id = Uuid::new_v4();
        account()
            .given([opened(), AccountEvent::Deposited { amount: cents(100) }])
            .when(AccountCommand::DebitForTransfer {
                transfer_id,
                to: "b".into(),
                amount: cents(100),
            })
            .then_expect_events([AccountEvent::TransferDebited {
                transfer_id,
                to: "b".into(),
                amount: cents(100),
            }]);
        account()
            .given_no_previous_events()
            .when(AccountCommand::CreditFromTransfer {
                transfer_id,
                from: "a".into(),
                amount: cents(100),
            })
            .then_expect_error_message("unknown account");
        // A refund goes through even if the source was closed meanwhile.
        account()
            .given([opened(), AccountEvent::Closed])
            .when(AccountCommand::RefundTransfer {
                transfer_id,
                amount: cents(100),
                reason: "unknown account".into(),
            })
            .then_expect_events([AccountEvent::TransferRefunded {
                transfer_id,
                amount: cents(100),
                reason: "unknown account".into(),
            }])
            .then_expect_state(|a| assert_eq!(a.balance, 100));
    }

    #[test]
    fn transfer_lifecycle() {
        let test = || AggregateTest::<Transfer>::new(());
        let requested = TransferEvent::Requested {
            from: "a".into(),
            to: "b".into(),
            amount: cents(5),
        };
        test()
            .given_no_previous_events()
            .when(TransferCommand::Request {
                from: "a".into(),
                to: "a".into(),
                amount: cents(5),
            })
            .then_expect_error_message("cannot transfer from an account to itself");
        test()
            .given([requested.clone()])
            .when(TransferCommand::Complete)
            .then_expect_events([TransferEvent::Completed]);
        test()
            .given([requested.clone(), TransferEvent::Completed])
            .when(TransferCommand::Fail {
                reason: "late".into(),
            })
            .then_expect_error_message("transfer already finished");
        test()
            .given_no_previous_events()
            .when(TransferCommand::Complete)
            .then_expect_error_message("unknown transfer");
    }
}
