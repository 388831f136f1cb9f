//! The two aggregates: an account, and a transfer between two accounts.

use std::time::SystemTime;

use cqrs_core::{Aggregate, Personal};
use serde::{Deserialize, Serialize};

use super::{AccountCommand, AccountEvent, Cents, TransferCommand, TransferEvent, format_cents};
use super::{Field, InvalidText};

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
    /// The owner's name (erased once the account is forgotten).
    pub owner: Personal<String>,
    /// The balance in cents (never negative).
    pub balance: i64,
    /// The day of the last withdrawal (days since 1970-01-01, UTC).
    pub withdrawal_day: u32,
    /// The cents withdrawn on `withdrawal_day`.
    pub withdrawn_that_day: i64,
}

/// What an account's decisions need from outside, its
/// [`Services`](Aggregate::Services): a clock and the daily withdrawal limit.
#[derive(Debug, Clone, Copy)]
pub struct AccountServices {
    /// Today, in days since 1970-01-01 (UTC). Tests stop it: `|| 20_000`.
    pub today: fn() -> u32,
    /// The most one account may withdraw in a day.
    pub daily_limit: Cents,
}

impl AccountServices {
    /// The system clock, and `daily_limit`.
    pub fn new(daily_limit: Cents) -> Self {
        let today = || {
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
            now.map_or(0, |d| {
                u32::try_from(d.as_secs() / 86_400).unwrap_or(u32::MAX)
            })
        };
        AccountServices { today, daily_limit }
    }
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
    /// A withdrawal or debit larger than the balance (in cents).
    #[error("insufficient funds: balance {}, requested {}", format_cents(*.0), .1)]
    InsufficientFunds(i64, Cents),
    /// A withdrawal beyond the daily limit; the cents already withdrawn today.
    #[error("daily withdrawal limit {} reached: {} withdrawn today", .0, format_cents(*.1))]
    DailyLimitExceeded(Cents, i64),
    /// `close` with money left.
    #[error("balance is not zero: {}", format_cents(*.0))]
    BalanceNotZero(i64),
    /// An owner name that cannot be used (see [`Field::normalize`]): input refused
    /// before anything was written, not a decision of the account.
    #[error(transparent)]
    InvalidOwner(#[from] InvalidText),
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    /// 2: the state holds the day's withdrawals (snapshots of version 1 are ignored).
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = AccountServices;

    fn handle(
        &self,
        command: &AccountCommand,
        services: &AccountServices,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        use {AccountCommand as C, AccountError as Error, AccountEvent as E, AccountStatus as S};
        // Bad input is refused before the state is looked at, as for a bad account id.
        if let C::Open { owner, .. } = command {
            Field::Owner.normalize(owner)?;
        }
        match (command, self.status) {
            (C::Open { .. }, S::Unknown) => {}
            (C::Open { .. }, _) => return Err(Error::AlreadyExists),
            // Money that left for a failed transfer always comes back, even to an account
            // closed in the meantime: it is never lost.
            (C::RefundTransfer(..), S::Closed) => {}
            (_, S::Unknown) => return Err(Error::Unknown),
            (_, S::Closed) => return Err(Error::Closed),
            (_, S::Open) => {}
        }
        let event = match command.clone() {
            C::Open { account, owner } => E::Opened {
                owner: Personal::new(account, Field::Owner.normalize(&owner)?),
            },
            C::Deposit(amount) => E::Deposited { amount },
            C::Withdraw(amount) | C::DebitForTransfer(_, _, amount)
                if amount.get() > self.balance =>
            {
                return Err(Error::InsufficientFunds(self.balance, amount));
            }
            C::Withdraw(amount) => {
                let day = (services.today)();
                let today = if day == self.withdrawal_day {
                    self.withdrawn_that_day
                } else {
                    0
                };
                if today + amount.get() > services.daily_limit.get() {
                    return Err(Error::DailyLimitExceeded(services.daily_limit, today));
                }
                E::Withdrawn { amount, day }
            }
            C::Close if self.balance != 0 => return Err(Error::BalanceNotZero(self.balance)),
            C::Close => E::Closed,
            C::DebitForTransfer(transfer_id, to, amount) => E::TransferDebited {
                transfer_id,
                to,
                amount,
            },
            C::CreditFromTransfer(transfer_id, from, amount) => E::TransferCredited {
                transfer_id,
                from,
                amount,
            },
            C::RefundTransfer(transfer_id, amount, reason) => E::TransferRefunded {
                transfer_id,
                amount,
                reason,
            },
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
            // A load of a deleted stream stops at its tombstone (`Error::StreamDeleted`).
            AccountEvent::Deleted(_) => {}
            AccountEvent::Withdrawn { amount, day } => {
                if day != self.withdrawal_day {
                    (self.withdrawal_day, self.withdrawn_that_day) = (day, 0);
                }
                self.withdrawn_that_day += amount.get();
            }
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
        let event = match (self.status, command.clone()) {
            (TransferStatus::Unknown, TransferCommand::Request(from, to, amount)) => {
                if from == to {
                    return Err(TransferError::SameAccount);
                }
                TransferEvent::Requested { from, to, amount }
            }
            (_, TransferCommand::Request(..)) => return Err(TransferError::AlreadyRequested),
            (TransferStatus::Unknown, _) => return Err(TransferError::Unknown),
            (TransferStatus::Pending, TransferCommand::Complete) => TransferEvent::Completed,
            (TransferStatus::Pending, TransferCommand::Fail(reason)) => {
                TransferEvent::Failed { reason }
            }
            _ => return Err(TransferError::Finished),
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: TransferEvent) {
        match event {
            TransferEvent::Requested { .. } => self.status = TransferStatus::Pending,
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
            owner: Personal::new("a", "ada".to_owned()),
        }
    }

    const DAY: u32 = 20_000;

    fn account() -> AggregateTest<Account> {
        on_day(|| DAY)
    }

    /// Accounts with a clock stopped on a day and a daily limit of 10.00.
    fn on_day(today: fn() -> u32) -> AggregateTest<Account> {
        let daily_limit = cents(1_000);
        AggregateTest::new(AccountServices { today, daily_limit })
    }

    fn withdrawn(c: i64, day: u32) -> AccountEvent {
        AccountEvent::Withdrawn {
            amount: cents(c),
            day,
        }
    }

    #[test]
    fn the_daily_withdrawal_limit() {
        let rich = || {
            [
                opened(),
                AccountEvent::Deposited {
                    amount: cents(5_000),
                },
            ]
        };
        // Under the limit, the day's withdrawals add up.
        account()
            .given([rich().as_slice(), &[withdrawn(600, DAY)]].concat())
            .when(AccountCommand::Withdraw(cents(400)))
            .then_expect_events([withdrawn(400, DAY)])
            .then_expect_state(|a| assert_eq!(a.withdrawn_that_day, 1_000));
        // Over it: rejected.
        account()
            .given([rich().as_slice(), &[withdrawn(600, DAY)]].concat())
            .when(AccountCommand::Withdraw(cents(401)))
            .then_expect_error_message(
                "daily withdrawal limit 10.00 reached: 6.00 withdrawn today",
            );
        account()
            .given(rich())
            .when(AccountCommand::Withdraw(cents(1_001)))
            .then_expect_error_message(
                "daily withdrawal limit 10.00 reached: 0.00 withdrawn today",
            );
        // The next day, the limit is available again.
        on_day(|| DAY + 1)
            .given([rich().as_slice(), &[withdrawn(1_000, DAY)]].concat())
            .when(AccountCommand::Withdraw(cents(1_000)))
            .then_expect_events([withdrawn(1_000, DAY + 1)])
            .then_expect_state(|a| {
                assert_eq!((a.withdrawal_day, a.withdrawn_that_day), (DAY + 1, 1_000))
            });
    }

    #[test]
    fn open_deposit_withdraw() {
        account()
            .given_no_previous_events()
            .when(AccountCommand::open("a", "ada"))
            .then_expect_events([opened()]);
        account()
            .given([opened()])
            .when(AccountCommand::Deposit(cents(500)))
            .then_expect_events([AccountEvent::Deposited { amount: cents(500) }])
            .then_expect_state(|a| assert_eq!(a.balance, 500));
        account()
            .given([opened(), AccountEvent::Deposited { amount: cents(500) }])
            .when(AccountCommand::Withdraw(cents(200)))
            .then_expect_events([withdrawn(200, DAY)])
            .then_expect_state(|a| assert_eq!(a.balance, 300));
    }

    #[test]
    fn rejections() {
        account()
            .given([opened()])
            .when(AccountCommand::open("a", "bob"))
            .then_expect_error_message("account already exists");
        account()
            .given_no_previous_events()
            .when(AccountCommand::Deposit(cents(1)))
            .then_expect_error_message("unknown account");
        account()
            .given([opened(), AccountEvent::Deposited { amount: cents(100) }])
            .when(AccountCommand::Withdraw(cents(101)))
            .then_expect_error_message("insufficient funds: balance 1.00, requested 1.01");
        account()
            .given([opened(), AccountEvent::Deposited { amount: cents(100) }])
            .when(AccountCommand::Close)
            .then_expect_error_message("balance is not zero: 1.00");
        account()
            .given([opened(), AccountEvent::Closed])
            .when(AccountCommand::Deposit(cents(1)))
            .then_expect_error_message("account is closed");
        account()
            .given_no_previous_events()
            .when(AccountCommand::open("a", "  "))
            .then_expect_error_message("the owner name is empty");
        account()
            .given([opened()])
            .when(AccountCommand::open("a", "a\u{202e}b"))
            .then_expect_error_message(
                "the owner name contains the invisible format character U+202E at character 2",
            );
        // The owner is kept in Normalization Form C.
        account()
            .given_no_previous_events()
            .when(AccountCommand::open("a", "Zoe\u{308}"))
            .then_expect_events([AccountEvent::Opened {
                owner: Personal::new("a", "Zo\u{eb}".to_owned()),
            }]);
    }

    #[test]
    fn close_with_zero_balance() {
        account()
            .given([
                opened(),
                AccountEvent::Deposited { amount: cents(100) },
                withdrawn(100, DAY),
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
            .when(AccountCommand::DebitForTransfer(
                transfer_id,
                "b".into(),
                cents(100),
            ))
            .then_expect_events([AccountEvent::TransferDebited {
                transfer_id,
                to: "b".into(),
                amount: cents(100),
            }]);
        account()
            .given_no_previous_events()
            .when(AccountCommand::CreditFromTransfer(
                transfer_id,
                "a".into(),
                cents(100),
            ))
            .then_expect_error_message("unknown account");
        // A refund goes through even if the source was closed meanwhile.
        account()
            .given([opened(), AccountEvent::Closed])
            .when(AccountCommand::RefundTransfer(
                transfer_id,
                cents(100),
                "unknown account".into(),
            ))
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
            .when(TransferCommand::Request("a".into(), "a".into(), cents(5)))
            .then_expect_error_message("cannot transfer from an account to itself");
        test()
            .given([requested.clone()])
            .when(TransferCommand::Complete)
            .then_expect_events([TransferEvent::Completed]);
        test()
            .given([requested.clone(), TransferEvent::Completed])
            .when(TransferCommand::Fail("late".into()))
            .then_expect_error_message("transfer already finished");
        test()
            .given_no_previous_events()
            .when(TransferCommand::Complete)
            .then_expect_error_message("unknown transfer");
    }
}
