//! `verify`: walk the whole store and report what is damaged.

use cqrs_core::{EventStore, Position, Problem};
use serde_json::{Value, json};

use super::{Bar, Operations, Report};
use crate::Result;

impl<S: EventStore + Clone + 'static> Operations<S> {
    pub(super) async fn verify(&self) -> Result<Report> {
        let total = self.store.count_events(Position::START).await?;
        let mut bar = Bar::new(self.progress, "verify", total.saturating_mul(2));
        let mut found = cqrs_core::verify(&self.store, |done| bar.update(done, None)).await?;
        bar.finish();
        // Each projection's checkpoint must be a position of this log (or its start).
        let end = found.log_records;
        let mut checkpoints = Vec::new();
        for projection in self.projections.iter().filter(|p| !p.inline()) {
            let checkpoint = projection.checkpoint().await?;
            let ahead = checkpoint.commit == 0 && checkpoint.sequence > end;
            checkpoints.push(json!({
                "projection": projection.name(),
                "checkpoint": checkpoint.to_string(),
                "ahead_of_log": ahead,
            }));
            if ahead {
                found.problems.push(Problem::Unreadable {
                    location: format!("checkpoint of projection {:?}", projection.name()),
                    error: format!(
                        "checkpoint {checkpoint} is past the end of the log ({end} records): \
                         the log lost events, or the checkpoint is damaged"
                    ),
                });
            }
        }
        for check in &self.checks {
            for problem in check().await? {
                found.add(problem);
            }
        }
        let mut text = format!(
            "log        {} records\nstreams    {} ({} records)\n",
            found.log_records, found.streams, found.stream_records
        );
        for problem in &found.problems {
            text.push_str(&format!("DAMAGED    {problem}\n"));
        }
        if found.more_problems > 0 {
            text.push_str(&format!("DAMAGED    … and {} more\n", found.more_problems));
        }
        let problems = found.problem_count();
        text.push_str(&if problems == 0 {
            "intact: every record reads, streams have no gaps, counts agree\n".to_owned()
        } else {
            format!("{problems} problem(s) found: see docs/06-operations.md, \"Restoring a damaged store\"\n")
        });
        let json = json!({
            "intact": problems == 0,
            "log_records": found.log_records,
            "streams": found.streams,
            "stream_records": found.stream_records,
            "problems": found.problems.iter().map(problem_json).collect::<Vec<_>>(),
            "more_problems": found.more_problems,
            "checkpoints": checkpoints,
        });
        Ok(Report {
            text,
            json,
            damaged: (problems > 0).then_some(problems),
        })
    }
}

fn problem_json(problem: &Problem) -> Value {
    let kind = match problem {
        Problem::Unreadable { .. } => "unreadable",
        Problem::LogOrder { .. } => "log_order",
        Problem::StreamGap { .. } => "stream_gap",
        Problem::CountMismatch { .. } => "count_mismatch",
        _ => "other",
    };
    json!({ "kind": kind, "detail": problem.to_string() })
}
