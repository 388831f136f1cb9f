//! Opening bad paths and reading damaged records give clear, typed errors. (A store open
//! in another process is tested in `crash.rs`, whose binary runs that other process.)

use cqrs_core::{Error, EventData, EventLog, ExpectedVersion, Position, StreamId};
use cqrs_sled::{OpenError, SledConfig, SledEventStore};
use futures::{StreamExt, TryStreamExt};

fn names_path(e: &OpenError, path: &std::path::Path) {
    let shown = e.to_string();
    assert!(shown.contains(&*path.to_string_lossy()), "{shown}");
}

#[test]
fn a_missing_directory_is_created_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/events");
    let err = SledConfig::new(&path)
        .create_if_missing(false)
        .open()
        .unwrap_err();
    assert!(matches!(err, OpenError::Missing { .. }), "{err:?}");
    names_path(&err, &path);
    SledEventStore::open(&path).unwrap();
    assert!(path.join("conf").is_file());
}

#[test]
fn a_file_is_not_a_database_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"hello").unwrap();
    let err = SledEventStore::open(&path).unwrap_err();
    assert!(matches!(err, OpenError::NotADirectory { .. }), "{err:?}");
    names_path(&err, &path);
}

#[test]
fn a_directory_of_other_data_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let err = SledEventStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::NotADatabase { .. }), "{err:?}");
    names_path(&err, dir.path());
    assert_eq!(
        std::fs::read(dir.path().join("notes.txt")).unwrap(),
        b"mine"
    );
}

#[test]
fn sled_files_that_do_not_parse_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("conf"),
        b"\xff\x00garbage, not a sled config\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("db"), vec![0xA5; 4096]).unwrap();
    let err = SledEventStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, OpenError::NotADatabase { .. } | OpenError::Io { .. }),
        "{err:?}"
    );
    names_path(&err, dir.path());
}

#[test]
fn a_store_open_in_this_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _open = SledEventStore::open(dir.path()).unwrap();
    let err = SledEventStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    names_path(&err, dir.path());
}

#[tokio::test]
async fn a_corrupt_record_is_a_typed_error_and_the_rest_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let a = StreamId::new("account", "a").unwrap();
    let b = StreamId::new("account", "b").unwrap();
    let event = |n: u8| EventData::new("Happened", vec![b'0' + n]);
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        store
            .append(&a, ExpectedVersion::Any, vec![event(1)])
            .await
            .unwrap(); // position 1
        store
            .append(&b, ExpectedVersion::Any, vec![event(2)])
            .await
            .unwrap(); // 2
        // One event per append, so that each is a log record of its own.
        for n in [3, 4] {
            store
                .append(&a, ExpectedVersion::Any, vec![event(n)])
                .await
                .unwrap(); // 3, 4
        }
        store
            .append(&b, ExpectedVersion::Any, vec![event(5)])
            .await
            .unwrap(); // 5
    }
    {
        // Damage two records through sled directly: a's version 2 (position 3) entirely,
        // and the payload length of a's version 3 (position 4), keeping its header.
        // The store's file lock can outlive the drop for a moment (its background
        // threads end on their own): try again, within a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("sled::open after the store was dropped: {e}"),
            }
        };
        let events = db.open_tree("cqrs.events").unwrap();
        let key = |p: u64| [&[b'L'][..], &p.to_be_bytes()[..]].concat();
        events.insert(key(3), &b"\x07garbage"[..]).unwrap();
        let mut record = events.get(key(4)).unwrap().unwrap().to_vec();
        let len = record.len();
        record[len - 3] = 0xff;
        events.insert(key(4), record).unwrap();
        db.flush().unwrap();
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    let read: Vec<_> = store.read_stream(&a, 1).collect().await;
    assert_eq!(read.len(), 3);
    assert_eq!(read[0].as_ref().unwrap().version, 1);
    for (item, version) in read[1..].iter().zip(2..) {
        match item {
            Err(Error::Corrupt { location, .. }) => {
                assert!(
                    location.contains(&format!("stream account/a version {version}")),
                    "{location}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // The other stream is intact.
    let other: Vec<_> = store.read_stream(&b, 1).try_collect().await.unwrap();
    assert_eq!(other.len(), 2);
    // The log reports both damaged records and goes on past them.
    let log: Vec<_> = store.read_all(Position::START, None).collect().await;
    assert_eq!(log.len(), 5);
    let errors: Vec<String> = log
        .iter()
        .filter_map(|r| match r {
            Err(Error::Corrupt { location, .. }) => Some(location.clone()),
            Err(e) => panic!("{e}"),
            Ok(_) => None,
        })
        .collect();
    assert_eq!(errors.len(), 2);
    assert!(errors[0].contains("log position 3"), "{}", errors[0]);
    assert!(
        errors[1].contains("stream account/a version 3"),
        "{}",
        errors[1]
    );
    assert_eq!(log[4].as_ref().unwrap().stream, b);
    // Appending still works.
    let done = store
        .append(&b, ExpectedVersion::Exact(2), vec![event(6)])
        .await
        .unwrap();
    assert_eq!(done.position, Position::new(0, 6));
}
