//! Encoding domain events and snapshots to bytes and back.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{BoxError, DomainEvent, Envelope, Error, JsonEvent, RecordedEvent, Result, Upcasters};

/// Turns domain events and aggregate snapshots into bytes and back, upcasting old records
/// on the way in.
///
/// Every typed read path (loading an aggregate, projections, the test kit) goes through a
/// codec: first [`upcast`](Codec::upcast), then [`decode`](Codec::decode). The default
/// is [`JsonCodec`].
pub trait Codec: Clone + Send + Sync + 'static {
    /// Encodes an event's payload.
    ///
    /// # Errors
    /// [`Error::Encode`] if the event cannot be serialized.
    fn encode<E: DomainEvent>(&self, event: &E) -> Result<Vec<u8>>;

    /// Lifts an old record to the current type name, schema version and payload shape.
    /// The default returns the record unchanged.
    ///
    /// # Errors
    /// [`Error::Decode`] naming the record if an upcaster fails.
    fn upcast(&self, record: RecordedEvent) -> Result<RecordedEvent> {
        Ok(record)
    }

    /// Decodes an (already upcast) record into the domain type.
    ///
    /// # Errors
    /// [`Error::UnknownEventType`] if the record's type is not in `E::EVENT_TYPES`;
    /// [`Error::Decode`] if the payload does not decode.
    fn decode<E: DomainEvent>(&self, record: &RecordedEvent) -> Result<E>;

    /// Encodes an aggregate's state for a snapshot.
    ///
    /// # Errors
    /// [`Error::Encode`] if the state cannot be serialized.
    fn encode_snapshot<T: Serialize>(&self, state: &T) -> Result<Vec<u8>>;

    /// Decodes a snapshot's payload.
    ///
    /// # Errors
    /// The decoder's error; a snapshot that does not decode is ignored by the loader.
    fn decode_snapshot<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, BoxError>;

    /// The stored type names whose records [`upcast`](Codec::upcast) may turn into one
    /// of `current`: the types a reader of `current` must ask the store for. `None` when
    /// the codec cannot tell, and readers then read every record (the default: a codec
    /// whose `upcast` renames types must say which).
    fn stored_types(&self, current: &[&str]) -> Option<Vec<String>> {
        let _ = current;
        None
    }

    /// Upcasts and decodes a record into an [`Envelope`].
    ///
    /// # Errors
    /// As for [`upcast`](Codec::upcast) and [`decode`](Codec::decode).
    fn decode_envelope<E: DomainEvent>(&self, record: RecordedEvent) -> Result<Envelope<E>> {
        self.decode_upcast_envelope(self.upcast(record)?)
    }

    /// Decodes an already [upcast](Codec::upcast) record into an [`Envelope`]: for
    /// readers that look at the upcast record before they decode it (a projection's
    /// [`wants`](crate::Projection::wants)). Every envelope is built here.
    ///
    /// # Errors
    /// As for [`decode`](Codec::decode).
    fn decode_upcast_envelope<E: DomainEvent>(&self, record: RecordedEvent) -> Result<Envelope<E>> {
        let event = self.decode(&record)?;
        Ok(Envelope {
            event_id: record.event_id,
            stream: record.stream,
            version: record.version,
            position: record.position,
            recorded_at: record.recorded_at,
            metadata: record.metadata,
            event,
        })
    }
}

/// The default [`Codec`]: serde JSON, with an optional chain of [`Upcasters`].
///
/// A record whose type and version have no upcaster is decoded straight from its bytes;
/// only old records pay for the detour through a JSON value.
///
/// # Examples
/// ```
/// use cqrs_core::{Codec, JsonCodec, Upcasters};
///
/// let codec = JsonCodec::new().with_upcasters(Upcasters::new());
/// let bytes = codec.encode_snapshot(&vec![1, 2, 3])?;
/// let back: Vec<i32> = codec.decode_snapshot(&bytes).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// # Ok::<(), cqrs_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct JsonCodec {
    upcasters: Arc<Upcasters>,
}

impl JsonCodec {
    /// A JSON codec without upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `upcasters` on every read.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    /// The registered upcasters.
    pub fn upcasters(&self) -> &Upcasters {
        &self.upcasters
    }
}

fn decode_error(record: &RecordedEvent, source: impl Into<BoxError>) -> Error {
    Error::Decode {
        stream: record.stream.clone(),
        version: record.version,
        event_type: record.event_type.clone(),
        source: source.into(),
    }
}

impl Codec for JsonCodec {
    fn encode<E: DomainEvent>(&self, event: &E) -> Result<Vec<u8>> {
        serde_json::to_vec(event).map_err(|e| Error::Encode {
            what: event.event_type().to_owned(),
            source: e.into(),
        })
    }

    /// `current`, and every type that has an upcaster (an upcaster may rename a type to
    /// any other, so each is asked for).
    fn stored_types(&self, current: &[&str]) -> Option<Vec<String>> {
        let mut types: Vec<String> = current.iter().map(|&t| t.to_owned()).collect();
        for from in self.upcasters.source_types() {
            if !types.iter().any(|t| t == from) {
                types.push(from.to_owned());
            }
        }
        Some(types)
    }

    fn upcast(&self, mut record: RecordedEvent) -> Result<RecordedEvent> {
        if !self
            .upcasters
            .applies_to(&record.event_type, record.schema_version)
        {
            return Ok(record);
        }
        let payload =
            serde_json::from_slice(&record.payload).map_err(|e| decode_error(&record, e))?;
        let event = JsonEvent {
            event_type: std::mem::take(&mut record.event_type),
            schema_version: record.schema_version,
            payload,
        };
        let original_type = event.event_type.clone();
        let upcast = self.upcasters.upcast(event).map_err(|e| {
            record.event_type = original_type;
            decode_error(&record, e)
        })?;
        record.payload =
            serde_json::to_vec(&upcast.payload).map_err(|e| decode_error(&record, e))?;
        record.event_type = upcast.event_type;
        record.schema_version = upcast.schema_version;
        Ok(record)
    }

    fn decode<E: DomainEvent>(&self, record: &RecordedEvent) -> Result<E> {
        if !E::EVENT_TYPES.contains(&record.event_type.as_str()) {
            return Err(Error::UnknownEventType {
                stream: record.stream.clone(),
                version: record.version,
                event_type: record.event_type.clone(),
                schema_version: record.schema_version,
            });
        }
        if crate::StreamDeleted::is_tombstone(record) {
            let deleted =
                serde_json::from_slice(&record.payload).map_err(|e| decode_error(record, e))?;
            return E::from_stream_deleted(deleted).ok_or_else(|| {
                decode_error(
                    record,
                    "the event type lists \"$stream-deleted\" but from_stream_deleted gives nothing",
                )
            });
        }
        serde_json::from_slice(&record.payload).map_err(|e| decode_error(record, e))
    }

    fn encode_snapshot<T: Serialize>(&self, state: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(state).map_err(|e| Error::Encode {
            what: "snapshot".into(),
            source: e.into(),
        })
    }

    fn decode_snapshot<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(payload)?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::{Metadata, Position, StreamId};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Event {
        Deposited { cents: i64 },
        Renamed { name: String },
    }

    impl DomainEvent for Event {
        const EVENT_TYPES: &'static [&'static str] = &["Deposited", "Renamed"];
        fn event_type(&self) -> &'static str {
            match self {
                Event::Deposited { .. } => "Deposited",
                Event::Renamed { .. } => "Renamed",
            }
        }
        fn schema_version(&self) -> u32 {
            2
        }
    }

    fn record(event_type: &str, schema_version: u32, payload: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            event_id: Uuid::new_v4(),
            stream: StreamId::new("account", "a1").unwrap(),
            version: 7,
            position: Position::new(0, 9),
            event_type: event_type.into(),
            schema_version,
            recorded_at: SystemTime::now(),
            payload: serde_json::to_vec(&payload).unwrap(),
            metadata: Metadata::default(),
        }
    }

    fn codec() -> JsonCodec {
        // v1 "Deposit" stored whole units; v2 "Deposited" stores cents.
        JsonCodec::new().with_upcasters(Upcasters::new().register("Deposit", 1, |e: JsonEvent| {
            let units = e.payload["Deposit"]["units"]
                .as_i64()
                .ok_or("units missing")?;
            Ok(JsonEvent {
                event_type: "Deposited".into(),
                schema_version: 2,
                payload: json!({ "Deposited": { "cents": units * 100 } }),
            })
        }))
    }

    #[test]
    fn encodes_and_decodes_current_events_directly() {
        let codec = codec();
        let event = Event::Renamed { name: "ada".into() };
        let mut r = record("Renamed", 2, json!(null));
        r.payload = codec.encode(&event).unwrap();
        let r = codec.upcast(r).unwrap();
        assert_eq!(codec.decode::<Event>(&r).unwrap(), event);
    }

    #[test]
    fn upcasts_old_records_before_decoding() {
        let codec = codec();
        let envelope = codec
            .decode_envelope::<Event>(record("Deposit", 1, json!({ "Deposit": { "units": 3 } })))
            .unwrap();
        assert_eq!(envelope.event, Event::Deposited { cents: 300 });
        assert_eq!(envelope.version, 7);
    }

    #[test]
    fn unknown_types_and_bad_payloads_are_typed_errors_naming_the_record() {
        let codec = codec();
        match codec.decode_envelope::<Event>(record("Closed", 1, json!({}))) {
            Err(Error::UnknownEventType {
                stream,
                version,
                event_type,
                ..
            }) => assert_eq!(
                (stream.id(), version, event_type.as_str()),
                ("a1", 7, "Closed")
            ),
            other => panic!("{other:?}"),
        }
        match codec.decode_envelope::<Event>(record(
            "Renamed",
            2,
            json!({ "Renamed": { "name": 5 } }),
        )) {
            Err(Error::Decode {
                version,
                event_type,
                ..
            }) => assert_eq!((version, event_type.as_str()), (7, "Renamed")),
            other => panic!("{other:?}"),
        }
        // An upcaster that fails is a decode error naming the original type.
        match codec.decode_envelope::<Event>(record("Deposit", 1, json!({ "Deposit": {} }))) {
            Err(Error::Decode {
                event_type, source, ..
            }) => {
                assert_eq!(event_type, "Deposit");
                assert_eq!(source.to_string(), "units missing");
            }
            other => panic!("{other:?}"),
        }
        // Bytes that are not JSON at all, on the upcasting path.
        let mut garbage = record("Deposit", 1, json!(null));
        garbage.payload = vec![0xff, 0x00, 0x13];
        assert!(matches!(codec.upcast(garbage), Err(Error::Decode { .. })));
    }
}
