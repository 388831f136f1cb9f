//! `dead-letters list | redrive` and the consumers in `stats`, on a consumer whose
//! projection fails on one event until it is fixed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cqrs_cli::{DeadLettersCommand, DeadLettersListArgs, Operations, OpsCommand, RedriveArgs};
use cqrs_core::conformance::inbox::{Tick, tick_message};
use cqrs_core::{
    BoxError, Consumer, ConsumerConfig, Envelope, InMemoryEventStore, InMemoryInbox,
    InMemoryPublisher, OutboundMessage, Projection, Publisher, RetryPolicy, StreamId,
};
use serde_json::Value;

/// Fails on tick 2 while `broken` is set.
#[derive(Debug)]
struct Fussy {
    broken: Arc<AtomicBool>,
    applied: u64,
}

impl Projection for Fussy {
    type Event = Tick;

    fn name(&self) -> &str {
        "statements"
    }

    async fn apply(&mut self, _: &mut (), batch: &[Envelope<Tick>]) -> Result<(), BoxError> {
        for e in batch {
            if e.event == (Tick::Tick { n: 2 }) && self.broken.load(Ordering::SeqCst) {
                return Err("tick 2 is not supported yet".into());
            }
            self.applied += 1;
        }
        Ok(())
    }
}

async fn run_json(ops: &Operations<InMemoryEventStore>, command: OpsCommand) -> Value {
    let mut out = Vec::new();
    ops.run(&command, true, &mut out)
        .await
        .expect("the command runs");
    serde_json::from_slice(&out).expect("JSON output")
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriven_from_the_operations_subcommand() {
    let broker = InMemoryPublisher::new();
    let mut subscription = broker.subscribe();
    let broken = Arc::new(AtomicBool::new(true));
    let projection = Fussy {
        broken: broken.clone(),
        applied: 0,
    };
    let mut config = ConsumerConfig::default().with_attempts(1);
    config.backoff = RetryPolicy {
        max_attempts: u32::MAX,
        ..RetryPolicy::default()
    };
    let mut consumer = Consumer::new(InMemoryInbox::new(), projection).with_config(config);
    let stream = StreamId::new("account", "acc-1").unwrap();
    let batch: Vec<_> = (1..=3).map(|v| tick(&stream, v)).collect();
    for result in broker.publish(&batch).await {
        result.unwrap();
    }
    let stats = consumer.drain(&mut subscription).await.unwrap();
    assert_eq!((stats.applied, stats.dead_lettered), (1, 2), "{stats:?}");

    let ops = Operations::new(InMemoryEventStore::new())
        .consumer("statements", tokio::sync::Mutex::new(consumer));
    let list = OpsCommand::DeadLetters(DeadLettersCommand::List(DeadLettersListArgs {
        consumer: None,
        after: 0,
        limit: 100,
    }));
    let listed = run_json(&ops, list.clone()).await;
    let letters = listed["consumers"][0]["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "{listed}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("tick 2 is not supported yet")
    );
    assert_eq!(letters[0]["stream"], "account/acc-1");
    assert_eq!(letters[1]["version"], 3);

    let stats = run_json(&ops, OpsCommand::Stats).await;
    assert_eq!(stats["consumers"][0]["parked"], 1, "{stats}");
    assert_eq!(stats["consumers"][0]["dead_letters"], 2, "{stats}");

    let mut text = Vec::new();
    ops.run(&list, false, &mut text).await.unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("consumer statements: 2 dead letter(s)"),
        "{text}"
    );

    broken.store(false, Ordering::SeqCst);
    let redrive = OpsCommand::DeadLetters(DeadLettersCommand::Redrive(RedriveArgs {
        consumer: Some("statements".into()),
        stream: Some("account/acc-1".into()),
    }));
    let redriven = run_json(&ops, redrive).await;
    assert_eq!(redriven["consumers"][0]["applied"], 2, "{redriven}");
    assert_eq!(redriven["consumers"][0]["unparked"][0], "account/acc-1");
    let stats = run_json(&ops, OpsCommand::Stats).await;
    assert_eq!(stats["consumers"][0]["dead_letters"], 0, "{stats}");

    let unknown = OpsCommand::DeadLetters(DeadLettersCommand::Redrive(RedriveArgs {
        consumer: Some("nobody".into()),
        stream: None,
    }));
    let error = ops.run(&unknown, false, &mut Vec::new()).await.unwrap_err();
    assert_eq!(error.exit_code(), 2, "{error}");
}

fn tick(stream: &StreamId, version: u64) -> OutboundMessage {
    tick_message(stream, version, version)
}
