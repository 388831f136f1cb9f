//! Stream names, expected versions and positions in the global log.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The name of one aggregate's stream: its aggregate type and its id.
///
/// Both parts are validated once, here, so every backend stores the same set of names:
/// the type is 1 to [`StreamId::MAX_TYPE_LEN`] bytes without `/` or NUL, the id 1 to
/// [`StreamId::MAX_ID_LEN`] bytes without NUL. Anything else (quotes, unicode, spaces,
/// `/` in the id) is allowed and round-trips unchanged.
///
/// A `StreamId` is cheap to clone (two reference-counted strings). It displays and
/// parses as `type/id`.
///
/// # Examples
/// ```
/// use cqrs_core::StreamId;
///
/// let stream = StreamId::new("account", "acc-42")?;
/// assert_eq!(stream.to_string(), "account/acc-42");
/// assert_eq!("account/acc-42".parse::<StreamId>()?, stream);
/// assert!(StreamId::new("account", "").is_err());
/// # Ok::<(), cqrs_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawStreamId")]
pub struct StreamId {
    aggregate_type: Arc<str>,
    id: Arc<str>,
}

#[derive(Deserialize)]
struct RawStreamId {
    aggregate_type: String,
    id: String,
}

/// A stream id was refused: why, in [`reason`](InvalidStreamId::reason).
///
/// It converts into [`Error::InvalidStreamId`](crate::Error::InvalidStreamId), so `?`
/// works in functions that return [`cqrs_core::Result`](crate::Result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream id: {reason}")]
pub struct InvalidStreamId {
    /// Why the id was refused.
    pub reason: String,
}

/// A string is not a log position (`N` or `N:M`).
///
/// It converts into [`Error::InvalidInput`](crate::Error::InvalidInput).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a log position (N or N:M)")]
pub struct InvalidPosition(pub String);

impl TryFrom<RawStreamId> for StreamId {
    type Error = InvalidStreamId;

    fn try_from(raw: RawStreamId) -> Result<Self, InvalidStreamId> {
        StreamId::new(raw.aggregate_type, raw.id)
    }
}

impl StreamId {
    /// The longest aggregate type name, in bytes.
    pub const MAX_TYPE_LEN: usize = 128;
    /// The longest aggregate id, in bytes.
    pub const MAX_ID_LEN: usize = 1024;

    /// Makes a stream id from an aggregate type and an aggregate id.
    ///
    /// # Errors
    /// [`InvalidStreamId`] (which converts into
    /// [`Error::InvalidStreamId`](crate::Error::InvalidStreamId)) if either part is empty
    /// or too long, if either contains a NUL character, or if the type contains `/`.
    pub fn new(
        aggregate_type: impl AsRef<str>,
        id: impl AsRef<str>,
    ) -> Result<Self, InvalidStreamId> {
        let (aggregate_type, id) = (aggregate_type.as_ref(), id.as_ref());
        let invalid = |reason: String| Err(InvalidStreamId { reason });
        if aggregate_type.is_empty() {
            return invalid("the aggregate type is empty".into());
        }
        if aggregate_type.len() > Self::MAX_TYPE_LEN {
            return invalid(format!(
                "the aggregate type is {} bytes long, more than the limit of {}",
                aggregate_type.len(),
                Self::MAX_TYPE_LEN
            ));
        }
        if aggregate_type.contains(['/', '\0']) {
            return invalid(format!(
                "the aggregate type {aggregate_type:?} contains '/' or NUL"
            ));
        }
        if id.is_empty() {
            return invalid(format!("the id of a {aggregate_type} stream is empty"));
        }
        if id.len() > Self::MAX_ID_LEN {
            return invalid(format!(
                "the id of a {aggregate_type} stream is {} bytes long, more than the limit of {}",
                id.len(),
                Self::MAX_ID_LEN
            ));
        }
        if id.contains('\0') {
            return invalid(format!("the id {id:?} contains a NUL character"));
        }
        Ok(StreamId {
            aggregate_type: aggregate_type.into(),
            id: id.into(),
        })
    }

    /// The aggregate type, e.g. `account`.
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    /// The aggregate id within its type.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.id)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({:?}/{:?})", &*self.aggregate_type, &*self.id)
    }
}

impl FromStr for StreamId {
    type Err = InvalidStreamId;

    /// Parses `type/id`; the id is everything after the first `/`.
    fn from_str(s: &str) -> Result<Self, InvalidStreamId> {
        match s.split_once('/') {
            Some((aggregate_type, id)) => StreamId::new(aggregate_type, id),
            None => Err(InvalidStreamId {
                reason: format!("{s:?} is not of the form <type>/<id>"),
            }),
        }
    }
}

/// What an append expects of the stream's current version (optimistic concurrency).
///
/// Versions count a stream's events: a stream with no events is at version 0, and its
/// first event has version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check: append at the end, whatever the version.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must be exactly at this version (`Exact(0)` is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at version `actual` satisfies this expectation.
    ///
    /// # Examples
    /// ```
    /// use cqrs_core::ExpectedVersion;
    ///
    /// assert!(ExpectedVersion::NoStream.matches(0));
    /// assert!(ExpectedVersion::Exact(3).matches(3));
    /// assert!(!ExpectedVersion::StreamExists.matches(0));
    /// ```
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// A position in the global log: where an event sits in the one total order of all
/// events, and the cursor a reader resumes from.
///
/// A position is a pair compared lexicographically: `commit` orders commits (PostgreSQL
/// stores the writing transaction's id here; sled and the in-memory store, whose single
/// writer already hands out positions in commit order, leave it 0) and `sequence` orders
/// events within and across commits. Treat positions as opaque: compare them, store them
/// and hand them back, but do not do arithmetic on them.
///
/// `Position` displays as `sequence` when `commit` is 0 and as `commit:sequence`
/// otherwise, and parses both forms.
///
/// # Examples
/// ```
/// use cqrs_core::Position;
///
/// let p: Position = "42".parse()?;
/// assert_eq!(p, Position::new(0, 42));
/// assert_eq!("7:3".parse::<Position>()?.to_string(), "7:3");
/// assert!(Position::START < p);
/// # Ok::<(), cqrs_core::Error>(())
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Position {
    /// Orders commits; 0 on stores whose sequence alone is in commit order.
    pub commit: u64,
    /// Orders events.
    pub sequence: u64,
}

impl Position {
    /// The position before the first event: reading after it reads the whole log.
    pub const START: Position = Position {
        commit: 0,
        sequence: 0,
    };

    /// Makes a position from its two parts.
    pub const fn new(commit: u64, sequence: u64) -> Self {
        Position { commit, sequence }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.commit == 0 {
            write!(f, "{}", self.sequence)
        } else {
            write!(f, "{}:{}", self.commit, self.sequence)
        }
    }
}

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(s: &str) -> Result<Self, InvalidPosition> {
        let bad = || InvalidPosition(s.to_owned());
        let (commit, sequence) = match s.split_once(':') {
            Some((c, q)) => (c.parse().map_err(|_| bad())?, q.parse().map_err(|_| bad())?),
            None => (0, s.parse().map_err(|_| bad())?),
        };
        Ok(Position { commit, sequence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_rejects_bad_parts_and_keeps_odd_ones() {
        assert!(StreamId::new("", "x").is_err());
        assert!(StreamId::new("a/b", "x").is_err());
        assert!(StreamId::new("a", "x\0y").is_err());
        assert!(StreamId::new("a", "x".repeat(StreamId::MAX_ID_LEN + 1)).is_err());
        assert!(StreamId::new("a".repeat(StreamId::MAX_TYPE_LEN + 1), "x").is_err());
        let odd = StreamId::new("account", "o'neil \"quoted\" / ünïcödé 🦀").unwrap();
        assert_eq!(odd.id(), "o'neil \"quoted\" / ünïcödé 🦀");
        assert_eq!(odd.to_string().parse::<StreamId>().unwrap(), odd);
        let json = serde_json::to_string(&odd).unwrap();
        assert_eq!(serde_json::from_str::<StreamId>(&json).unwrap(), odd);
        assert!(serde_json::from_str::<StreamId>(r#"{"aggregate_type":"","id":"x"}"#).is_err());
    }

    #[test]
    fn expected_version_matches() {
        assert!(ExpectedVersion::Any.matches(0) && ExpectedVersion::Any.matches(9));
        assert!(ExpectedVersion::NoStream.matches(0) && !ExpectedVersion::NoStream.matches(1));
        assert!(ExpectedVersion::StreamExists.matches(1));
        assert!(ExpectedVersion::Exact(0).matches(0) && !ExpectedVersion::Exact(2).matches(1));
    }

    #[test]
    fn position_orders_and_round_trips() {
        assert!(Position::new(1, 0) > Position::new(0, 99));
        assert!(Position::new(5, 2) < Position::new(5, 3));
        for p in [Position::START, Position::new(0, 17), Position::new(800, 3)] {
            assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        }
        assert!("x".parse::<Position>().is_err());
        assert!("1:".parse::<Position>().is_err());
    }
}
