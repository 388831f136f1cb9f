//! Commands, and the money amounts they carry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An amount of money in integer cents, always positive.
///
/// Parsed from `12`, `12.5` or `12.50`; zero, negative amounts, more than two decimals
/// and anything that is not a number are refused before anything is written.
///
/// Stored events hold it as a plain number (`#[serde(transparent)]`): reading them back
/// does not repeat the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cents(i64);

impl Cents {
    /// The largest amount accepted in one operation: 1,000,000,000.00.
    pub const MAX: i64 = 100_000_000_000;

    /// An amount in cents.
    ///
    /// # Errors
    /// If `cents` is not in `1..=Cents::MAX`.
    pub fn new(cents: i64) -> Result<Self, AmountError> {
        if cents <= 0 {
            return Err(AmountError::NotPositive);
        }
        if cents > Self::MAX {
            return Err(AmountError::TooLarge);
        }
        Ok(Cents(cents))
    }

    /// The amount in cents.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a decimal number.
    #[error("not an amount: expected a number like 12, 12.5 or 12.50")]
    NotANumber,
    /// Zero or negative.
    #[error("the amount must be more than zero")]
    NotPositive,
    /// More than two decimals.
    #[error("at most two decimals (cents)")]
    TooPrecise,
    /// Larger than [`Cents::MAX`].
    #[error("the amount is larger than 1,000,000,000.00")]
    TooLarge,
}

impl FromStr for Cents {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, AmountError> {
        let s = s.trim();
        if s.starts_with('-') {
            return Err(AmountError::NotPositive);
        }
        let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(fraction) {
            return Err(AmountError::NotANumber);
        }
        // Limit the digits before parsing so nothing overflows.
        if fraction.len() > 2 {
            return Err(AmountError::TooPrecise);
        }
        if whole.trim_start_matches('0').len() > 10 {
            return Err(AmountError::TooLarge);
        }
        let parse = |part: &str| part.parse::<i64>().map_err(|_| AmountError::NotANumber);
        let scale = if fraction.len() == 1 { 10 } else { 1 };
        Cents::new(parse(whole)? * 100 + parse(fraction)? * scale)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Formats a balance (which may be zero) in units with two decimals.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// What an account can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    /// Open the account for an owner (a name). The owner's name is personal data of
    /// the data subject `account` (the account id: [`Bank`](crate::Bank) sets it to the
    /// normalized id of the account the command is for); `bank forget` erases it.
    Open {
        /// The account id, the data subject of the owner's name.
        account: String,
        /// The owner's name.
        owner: String,
    },
    /// Put money in.
    Deposit(Cents),
    /// Take money out (at most the daily limit in a day).
    Withdraw(Cents),
    /// Close the account; its balance must be zero.
    Close,
    /// Debit the account for a transfer: its id, the destination account, the amount.
    /// This and the next two are sent by the transfer process manager.
    DebitForTransfer(Uuid, String, Cents),
    /// Credit the account for a transfer: its id, the source account, the amount.
    CreditFromTransfer(Uuid, String, Cents),
    /// Give back a transfer's debit after the credit failed (compensation): the
    /// transfer's id, the amount, and why it failed.
    RefundTransfer(Uuid, Cents, String),
}

impl AccountCommand {
    /// Opens `account` for `owner`.
    pub fn open(account: impl Into<String>, owner: impl Into<String>) -> Self {
        AccountCommand::Open {
            account: account.into(),
            owner: owner.into(),
        }
    }
}

/// What a transfer can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferCommand {
    /// Start a transfer: from the source account, to the destination, the amount.
    Request(String, String, Cents),
    /// Record that the money arrived.
    Complete,
    /// Record that the transfer failed, and why (after a refund, if the source was
    /// debited).
    Fail(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_amounts_as_cents() {
        for (text, cents) in [
            ("12", 1200),
            ("12.5", 1250),
            ("12.50", 1250),
            ("0.01", 1),
            ("007.10", 710),
            (" 3 ", 300),
        ] {
            assert_eq!(text.parse::<Cents>().unwrap().get(), cents, "{text}");
        }
        assert_eq!(Cents::new(1250).unwrap().to_string(), "12.50");
        assert_eq!(format_cents(-5), "-0.05");
    }

    #[test]
    fn refuses_bad_amounts() {
        use AmountError::*;
        for (text, error) in [
            ("0", NotPositive),
            ("0.00", NotPositive),
            ("-5", NotPositive),
            ("1.234", TooPrecise),
            ("abc", NotANumber),
            ("", NotANumber),
            ("1.", NotANumber),
            (".5", NotANumber),
            ("1e3", NotANumber),
            ("1,5", NotANumber),
            ("+5", NotANumber),
            ("99999999999", TooLarge),
            ("1000000000.01", TooLarge),
        ] {
            assert_eq!(text.parse::<Cents>(), Err(error), "{text:?}");
        }
        assert_eq!("1000000000".parse::<Cents>().unwrap().get(), Cents::MAX);
    }
}
