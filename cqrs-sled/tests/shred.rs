//! Crypto-shredding on sled: after a forget, the subject's name is nowhere in the
//! database's files (it never reached them), and every read still works.

use std::path::Path;

use cqrs_core::Shredded;
use cqrs_core::conformance::shredding::{find_stored, forget_erases_personal_data};
use cqrs_sled::{SledConfig, SledKeyStore};

/// Every byte of every file under `dir`.
fn files(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the sled directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            bytes.extend(files(&path));
        } else {
            bytes.extend(std::fs::read(&path).expect("read a sled file"));
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_leaves_no_plaintext_in_the_sled_files() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let events = SledConfig::new(dir.path()).open().expect("open sled");
    let keys = SledKeyStore::new(&events).expect("the key tree");
    let store = Shredded::new(events.clone(), keys);
    let dump = async || {
        events.flush().expect("flush");
        files(dir.path())
    };
    // Sled's files are log-structured: a deleted key may linger until sled rewrites its
    // segment, so only the plaintext is checked (it never reaches the files).
    forget_erases_personal_data(store, dump, false).await;

    // The scan sees what sled stores: a name appended in clear is found.
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
