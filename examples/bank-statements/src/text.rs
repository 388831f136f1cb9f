//! The text that `statements` prints without `--json`, from the JSON answers (the same
//! whether read directly or from a server).

use serde_json::Value;

/// A statement: the balance, a line per month, the last event.
pub(crate) fn statement(s: &Value) -> String {
    let owner = s["owner"].as_str().unwrap_or("?");
    let closed = if s["closed"] == Value::Bool(true) {
        " (closed)"
    } else {
        ""
    };
    let mut out = format!(
        "account {} of {owner}{closed}: balance {}\n{:<8} {:>14} {:>14}\n",
        s["account"].as_str().unwrap_or("?"),
        s["balance"].as_str().unwrap_or("?"),
        "month",
        "in",
        "out"
    );
    for m in s["months"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<8} {:>14} {:>14}\n",
            m["month"].as_str().unwrap_or("?"),
            m["in"].as_str().unwrap_or("?"),
            m["out"].as_str().unwrap_or("?")
        ));
    }
    let last = &s["last_event"];
    out.push_str(&format!(
        "last event: version {}, id {}, recorded at {}",
        last["version"],
        last["event_id"].as_str().unwrap_or("?"),
        last["recorded_at"].as_str().unwrap_or("?")
    ));
    out
}

/// Dead letters: one line each.
pub(crate) fn letters(l: &Value) -> String {
    let letters = l["dead_letters"].as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        return "no dead letters".to_owned();
    }
    let lines: Vec<String> = letters
        .iter()
        .map(|d| {
            let stream = d["stream"].as_str().unwrap_or("(no stream)");
            let version = d["version"]
                .as_u64()
                .map_or("-".to_owned(), |v| v.to_string());
            format!(
                "#{} {stream} v{version} ({} attempts, {}): {}",
                d["id"],
                d["attempts"],
                d["subject"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("?")
            )
        })
        .collect();
    lines.join("\n")
}

/// A redrive's report.
pub(crate) fn redrive(r: &Value) -> String {
    let mut out = format!(
        "redriven: {} applied, {} duplicates, {} remaining",
        r["applied"], r["duplicates"], r["remaining"]
    );
    for failure in r["failures"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  still failing: {}",
            failure.as_str().unwrap_or("?")
        ));
    }
    out
}

/// The counts.
pub(crate) fn stats(s: &Value) -> String {
    let mut out = format!(
        "streams {}, parked {}, dead letters {}",
        s["streams"], s["parked"], s["dead_letters"]
    );
    if let Some(consumer) = s["consumer"].as_object() {
        let counts: Vec<String> = consumer.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!("\nconsumer: {}", counts.join(", ")));
    }
    out
}
