//! Crypto-shredding on PostgreSQL: after a forget, the subject's name is nowhere in a
//! dump of the schema (it never reached the database), nor is its deleted key.

mod common;

use cqrs_core::Shredded;
use cqrs_core::conformance::shredding::{find_stored, forget_erases_personal_data};
use cqrs_postgres::PostgresKeyStore;

/// `pg_dump` of one schema (definitions and data), as bytes.
async fn dump_schema(schema: &str) -> Vec<u8> {
    let mut command = tokio::process::Command::new("pg_dump");
    command
        .arg("--dbname")
        .arg(common::database_url())
        .arg("--schema")
        .arg(schema)
        .kill_on_drop(true);
    let deadline = std::time::Duration::from_secs(60);
    let output = tokio::time::timeout(deadline, command.output())
        .await
        .expect("pg_dump finishes within a minute")
        .expect("run pg_dump");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_leaves_no_plaintext_in_a_dump_of_the_schema() {
    let Some(guard) = common::store_guarded().await else {
        return;
    };
    let events = guard.clone();
    let store = Shredded::new(events.clone(), PostgresKeyStore::new(&events));
    let schema = events.schema().to_owned();
    let dump = async || dump_schema(&schema).await;
    forget_erases_personal_data(store, dump, true).await;

    // The dump shows what the schema holds: a name appended in clear is found.
    let stream = cqrs_core::StreamId::new("control", "plain").expect("a stream id");
    let marker = format!("Plain Control {}", uuid::Uuid::new_v4());
    let payload = serde_json::to_vec(&serde_json::json!({ "name": marker })).expect("json");
    let event = cqrs_core::EventData::new("Plain", payload);
    let any = cqrs_core::ExpectedVersion::Any;
    cqrs_core::EventLog::append(&events, &stream, any, vec![event])
        .await
        .expect("append");
    let found = find_stored(&dump().await, marker.as_bytes());
    assert!(
        found.is_some(),
        "the scan does not see what the store holds"
    );
}
