//! Formatting helpers: timestamps and payloads.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Formats a time as RFC 3339 in UTC with microseconds, e.g. `2026-11-26T15:04:05.123456Z`
/// (as `events` prints it).
pub fn rfc3339(time: SystemTime) -> String {
    let (sign, since) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (1i64, d),
        Err(e) => (-1i64, e.duration()),
    };
    let micros_total = i128::from(sign) * i128::try_from(since.as_micros()).unwrap_or(i128::MAX);
    let secs = micros_total.div_euclid(1_000_000);
    let micros = micros_total.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), using the
/// 400-year era arithmetic of the civil calendar.
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year, March-based
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

/// A payload as JSON when it is JSON, else as a string (lossy UTF-8), as `events`
/// prints it.
pub fn payload_json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_705_445_123_456);
        assert_eq!(rfc3339(t), "2026-11-26T15:04:05.123456Z");
        // A leap day and a century boundary.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(86_400)),
            "1969-12-31T00:00:00.000000Z"
        );
    }

    #[test]
    fn payloads_render_as_json_or_text() {
        assert_eq!(payload_json(br#"{"a":1}"#)["a"], 1);
        assert_eq!(payload_json(b"not json"), Value::String("not json".into()));
    }
}
