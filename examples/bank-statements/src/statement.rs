//! An account's statement: what the service keeps per account, and how an event
//! changes it.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use cqrs_core::Envelope;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::AccountEvent;

/// Money in and out of an account in one month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthTotals {
    /// Deposits, transfers received and refunds, in cents.
    pub in_cents: i64,
    /// Withdrawals and transfers sent, in cents.
    pub out_cents: i64,
}

/// The last event applied to a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEvent {
    /// Its version in the account's stream.
    pub version: u64,
    /// Its event id (the bank's).
    pub event_id: Uuid,
    /// When the bank recorded it: microseconds since 1970-01-01 UTC.
    pub recorded_at_micros: i64,
}

/// An account's statement, built from the bank's account events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The account id.
    pub account: String,
    /// The owner, from the opening event.
    pub owner: Option<String>,
    /// Whether the account was closed.
    pub closed: bool,
    /// The running balance, in cents.
    pub balance_cents: i64,
    /// Totals per month (`YYYY-MM`, from each event's `recorded_at`, UTC).
    pub months: BTreeMap<String, MonthTotals>,
    /// The last event applied.
    pub last_event: LastEvent,
}

impl Statement {
    /// The statement after `event`, the next event of the account (`self` is `None`
    /// before the first one).
    pub fn apply(this: Option<Statement>, event: &Envelope<AccountEvent>) -> Statement {
        let last_event = LastEvent {
            version: event.version,
            event_id: event.event_id,
            recorded_at_micros: micros(event.recorded_at),
        };
        let mut statement = this.unwrap_or_else(|| Statement {
            account: event.stream.id().to_owned(),
            owner: None,
            closed: false,
            balance_cents: 0,
            months: BTreeMap::new(),
            last_event: last_event.clone(),
        });
        match &event.event {
            AccountEvent::Opened { owner } => statement.owner = owner.value().cloned(),
            AccountEvent::Closed => statement.closed = true,
            _ => {}
        }
        let (money_in, money_out) = event.event.money();
        if (money_in, money_out) != (0, 0) {
            let month = statement
                .months
                .entry(month(last_event.recorded_at_micros))
                .or_default();
            month.in_cents += money_in;
            month.out_cents += money_out;
            statement.balance_cents += money_in - money_out;
        }
        statement.last_event = last_event;
        statement
    }

    /// The statement as the command line and HTTP show it: amounts in cents and as
    /// text (`12.50`), times in RFC 3339 (UTC).
    pub fn to_json(&self) -> serde_json::Value {
        let months: Vec<_> = self
            .months
            .iter()
            .map(|(month, t)| {
                serde_json::json!({
                    "month": month,
                    "in_cents": t.in_cents,
                    "out_cents": t.out_cents,
                    "in": format_cents(t.in_cents),
                    "out": format_cents(t.out_cents),
                })
            })
            .collect();
        serde_json::json!({
            "account": self.account,
            "owner": self.owner,
            "closed": self.closed,
            "balance_cents": self.balance_cents,
            "balance": format_cents(self.balance_cents),
            "months": months,
            "last_event": {
                "version": self.last_event.version,
                "event_id": self.last_event.event_id,
                "recorded_at": rfc3339(self.last_event.recorded_at_micros),
            },
        })
    }
}

/// Cents as text: `1250` is `12.50`, `-5` is `-0.05`.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Microseconds since 1970-01-01 UTC (negative before it; saturating far away).
pub fn micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// The UTC date of a day count since 1970-01-01: (year, month 1–12, day 1–31).
/// (Howard Hinnant's `civil_from_days`.)
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The month (`YYYY-MM`, UTC) of a time in microseconds since 1970-01-01.
pub fn month(micros: i64) -> String {
    let (year, month, _) = civil(micros.div_euclid(MICROS_PER_DAY));
    format!("{year:04}-{month:02}")
}

/// A time in microseconds since 1970-01-01 as RFC 3339 in UTC, to the microsecond.
pub fn rfc3339(micros: i64) -> String {
    let (year, month, day) = civil(micros.div_euclid(MICROS_PER_DAY));
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let (secs, frac) = (in_day / 1_000_000, in_day % 1_000_000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{frac:06}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_times_in_utc() {
        assert_eq!(month(0), "1970-01");
        // 2024-02-29T23:59:59.5Z, a leap day.
        let leap = 1_709_251_199_500_000;
        assert_eq!(month(leap), "2024-02");
        assert_eq!(rfc3339(leap), "2024-02-29T23:59:59.500000Z");
        assert_eq!(month(leap + 500_000), "2024-03");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn cents_as_text() {
        assert_eq!(format_cents(1250), "12.50");
        assert_eq!(format_cents(-5), "-0.05");
        assert_eq!(format_cents(0), "0.00");
    }
}
