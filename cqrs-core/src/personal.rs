//! Personal data in events: [`Personal<T>`], a value tied to a data subject.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The key of the JSON object that marks a personal value in a payload.
pub(crate) const MARKER: &str = "$personal";

/// A value that is personal data of a *data subject* (a customer, a user): the part of
/// an event that can be forgotten.
///
/// Put it around the fields of an event (or of an aggregate's state) that hold personal
/// data, with the id of the subject they belong to. Over a
/// [`Shredded`](crate::Shredded) store the value is encrypted with the subject's own key
/// before it is stored, and decrypted on every read; after
/// [`Shredded::forget`](crate::Shredded::forget) deletes the key, every read gives
/// [`Personal::Erased`] instead, and the event otherwise reads as before. ADR 0029 has
/// the design; `docs/10-data-lifecycle.md` the guide.
///
/// The subject id is stored in clear beside the ciphertext (reads need it to find the
/// key): use an opaque id (an account id, a UUID), never the personal data itself.
///
/// # The four forms
/// - [`Value`](Personal::Value): the value, known (what a command writes, and what a read
///   gives while the subject's key exists);
/// - [`Erased`](Personal::Erased): the subject was forgotten; the value is gone for good;
/// - [`Sealed`](Personal::Sealed): still encrypted; what a reader that does not go
///   through the [`Shredded`](crate::Shredded) store sees (a PostgreSQL inline projection,
///   a read model that keeps the sealed value to open it at read time with
///   [`Shredder::unseal`](crate::Shredder::unseal));
/// - [`Unmarked`](Personal::Unmarked): a bare value written before the field was personal
///   (a legacy event): it has no subject and is **not** erased by a forget.
///
/// # Wire form (JSON)
/// `Value` serialises as `{"$personal":{"subject":"…","value":…}}`, which the store
/// wrapper replaces with `{"$personal":{"subject":"…","nonce":"…","ciphertext":"…"}}`
/// before storing; `Erased` is `{"$personal":{"subject":"…","erased":true}}`; `Unmarked`
/// is the bare value, and a bare value deserialises as `Unmarked`, so events stored
/// before a field became `Personal` still decode. Only JSON payloads are encrypted: the
/// wrapper cannot see a `Personal` inside another codec's bytes. The marker must be an
/// object of its own: do not `#[serde(flatten)]` a `Personal` into its parent.
///
/// # Examples
/// ```
/// use cqrs_core::Personal;
///
/// let owner = Personal::new("account-42", "Ada Lovelace".to_owned());
/// assert_eq!(owner.value().map(String::as_str), Some("Ada Lovelace"));
/// assert_eq!(owner.subject(), Some("account-42"));
///
/// let json = serde_json::to_string(&owner)?;
/// assert_eq!(json, r#"{"$personal":{"subject":"account-42","value":"Ada Lovelace"}}"#);
///
/// // What a read gives once the subject is forgotten:
/// let erased: Personal<String> =
///     serde_json::from_str(r#"{"$personal":{"subject":"account-42","erased":true}}"#)?;
/// assert!(erased.is_erased());
/// assert_eq!(erased.value(), None);
///
/// // An event stored before the field was personal:
/// let legacy: Personal<String> = serde_json::from_str(r#""Ada""#)?;
/// assert_eq!(legacy, Personal::Unmarked("Ada".to_owned()));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Personal<T> {
    /// The value, known.
    Value {
        /// The data subject the value belongs to.
        subject: String,
        /// The value.
        value: T,
    },
    /// The subject was forgotten: the value cannot be read any more.
    Erased {
        /// The data subject the value belonged to.
        subject: String,
    },
    /// The value, still encrypted: read without the [`Shredded`](crate::Shredded)
    /// store. [`Shredder::unseal`](crate::Shredder::unseal) opens it.
    Sealed {
        /// The data subject the value belongs to.
        subject: String,
        /// The encrypted value.
        sealed: SealedValue,
    },
    /// A bare value stored before the field was personal: no subject, never erased.
    Unmarked(T),
}

/// An encrypted personal value, as stored: opaque (its nonce and ciphertext, base64).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SealedValue {
    pub(crate) nonce: String,
    pub(crate) ciphertext: String,
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedValue({} bytes)", self.ciphertext.len())
    }
}

impl<T> Personal<T> {
    /// `value`, personal data of `subject`.
    pub fn new(subject: impl Into<String>, value: T) -> Self {
        Personal::Value {
            subject: subject.into(),
            value,
        }
    }

    /// The value, if it is known ([`Value`](Personal::Value) or
    /// [`Unmarked`](Personal::Unmarked)).
    pub fn value(&self) -> Option<&T> {
        match self {
            Personal::Value { value, .. } | Personal::Unmarked(value) => Some(value),
            Personal::Erased { .. } | Personal::Sealed { .. } => None,
        }
    }

    /// The value, if it is known.
    pub fn into_value(self) -> Option<T> {
        match self {
            Personal::Value { value, .. } | Personal::Unmarked(value) => Some(value),
            Personal::Erased { .. } | Personal::Sealed { .. } => None,
        }
    }

    /// The data subject, `None` for an [`Unmarked`](Personal::Unmarked) value.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Personal::Value { subject, .. }
            | Personal::Erased { subject }
            | Personal::Sealed { subject, .. } => Some(subject),
            Personal::Unmarked(_) => None,
        }
    }

    /// Whether the subject was forgotten.
    pub fn is_erased(&self) -> bool {
        matches!(self, Personal::Erased { .. })
    }
}

/// An empty [`Unmarked`](Personal::Unmarked) value (for states that derive `Default`).
impl<T: Default> Default for Personal<T> {
    fn default() -> Self {
        Personal::Unmarked(T::default())
    }
}

/// Shows the subject and the form, never the value: personal data stays out of logs.
impl<T> fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Personal::Value { subject, .. } => write!(f, "Personal::Value({subject:?}, ..)"),
            Personal::Erased { subject } => write!(f, "Personal::Erased({subject:?})"),
            Personal::Sealed { subject, .. } => write!(f, "Personal::Sealed({subject:?}, ..)"),
            Personal::Unmarked(_) => f.write_str("Personal::Unmarked(..)"),
        }
    }
}

/// The object under [`MARKER`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<V> {
    subject: String,
    // A missing `Option` field is `None` without `default` (which would bound `V: Default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<V>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ciphertext: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    erased: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marked<V> {
    #[serde(rename = "$personal")]
    personal: Body<V>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Wire<T> {
    Marked(Marked<T>),
    Bare(T),
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let body = |subject: &str| Body::<&T> {
            subject: subject.to_owned(),
            value: None,
            nonce: None,
            ciphertext: None,
            erased: false,
        };
        let personal = match self {
            Personal::Unmarked(value) => return value.serialize(serializer),
            Personal::Value { subject, value } => Body {
                value: Some(value),
                ..body(subject)
            },
            Personal::Erased { subject } => Body {
                erased: true,
                ..body(subject)
            },
            Personal::Sealed { subject, sealed } => Body {
                nonce: Some(sealed.nonce.clone()),
                ciphertext: Some(sealed.ciphertext.clone()),
                ..body(subject)
            },
        };
        Marked { personal }.serialize(serializer)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let body = match Wire::<T>::deserialize(deserializer)? {
            Wire::Bare(value) => return Ok(Personal::Unmarked(value)),
            Wire::Marked(Marked { personal }) => personal,
        };
        match body {
            Body {
                subject,
                value: Some(value),
                ..
            } => Ok(Personal::Value { subject, value }),
            Body {
                subject,
                nonce: Some(nonce),
                ciphertext: Some(ciphertext),
                ..
            } => Ok(Personal::Sealed {
                subject,
                sealed: SealedValue { nonce, ciphertext },
            }),
            Body {
                subject,
                erased: true,
                ..
            } => Ok(Personal::Erased { subject }),
            Body { subject, .. } => Err(serde::de::Error::custom(format!(
                "personal value of {subject:?} has no value, no ciphertext and is not erased"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Opened {
        owner: Personal<String>,
        age: Personal<u32>,
    }

    #[test]
    fn every_form_round_trips_through_json() {
        let sealed = SealedValue {
            nonce: "bm9uY2U=".into(),
            ciphertext: "Y2lwaGVy".into(),
        };
        for owner in [
            Personal::new("s1", "Ada".to_owned()),
            Personal::Erased {
                subject: "s1".into(),
            },
            Personal::Sealed {
                subject: "s1".into(),
                sealed,
            },
            Personal::Unmarked("Ada".to_owned()),
        ] {
            let event = Opened {
                owner,
                age: Personal::new("s1", 36),
            };
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(
                serde_json::from_str::<Opened>(&json).unwrap(),
                event,
                "{json}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_value() {
        let owner = Personal::new("s1", "Ada Lovelace".to_owned());
        assert!(!format!("{owner:?}").contains("Ada"));
        assert!(!format!("{:?}", Personal::Unmarked("Ada")).contains("Ada"));
    }

    #[test]
    fn a_marker_without_a_value_is_a_decode_error() {
        let json = r#"{"$personal":{"subject":"s1"}}"#;
        assert!(serde_json::from_str::<Personal<String>>(json).is_err());
        let json = r#"{"$personal":{"subject":"s1","value":5}}"#;
        assert!(serde_json::from_str::<Personal<String>>(json).is_err());
    }
}
