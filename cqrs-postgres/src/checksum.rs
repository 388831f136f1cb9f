//! CRC32C checksums of the rows the store writes ([ADR 0015](../../docs/adr/0015-record-checksums.md)),
//! stored in an `integer` column beside them and verified on every read: a payload
//! changed by a hand edit or a damaged page is refused as [`Error::Corrupt`], never
//! decoded. Rows written before migration 2 have no checksum and read unchecked.

use cqrs_core::{Error, Result};
use uuid::Uuid;

/// CRC-32C over the parts, in order (the `crc32c` crate: the CPU's instruction where
/// there is one; the same values as `crc`'s `CRC_32_ISCSI`, which a test pins).
fn crc32c(parts: &[&[u8]]) -> i32 {
    let crc = parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
    i32::from_be_bytes(crc.to_be_bytes())
}

/// The checksum of an event row: its id, type, schema version and payload (the fields a
/// reader decodes into a value; the stream and version are checked by the unique index
/// and by `verify`).
pub(crate) fn event(event_id: Uuid, event_type: &str, schema_version: u32, payload: &[u8]) -> i32 {
    let type_len = u64::try_from(event_type.len()).unwrap_or(u64::MAX);
    crc32c(&[
        event_id.as_bytes(),
        &type_len.to_be_bytes(),
        event_type.as_bytes(),
        &schema_version.to_be_bytes(),
        payload,
    ])
}

/// The checksum of a snapshot row: its version, schema version and payload.
pub(crate) fn snapshot(version: u64, schema_version: u32, payload: &[u8]) -> i32 {
    crc32c(&[
        &version.to_be_bytes(),
        &schema_version.to_be_bytes(),
        payload,
    ])
}

/// `Ok` if `stored` is absent (a row from before checksums) or equals `computed`.
pub(crate) fn verify(
    stored: Option<i32>,
    computed: i32,
    location: impl FnOnce() -> String,
) -> Result<()> {
    match stored {
        Some(stored) if stored != computed => Err(Error::corrupt(
            location(),
            format!(
                "checksum mismatch (stored {:#010x}, computed {:#010x})",
                stored.cast_unsigned(),
                computed.cast_unsigned()
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_counts_and_a_mismatch_is_corrupt() {
        let id = Uuid::from_u128(7);
        let base = event(id, "Deposited", 1, b"{\"amount\":1}");
        assert_ne!(
            base,
            event(Uuid::from_u128(8), "Deposited", 1, b"{\"amount\":1}")
        );
        assert_ne!(base, event(id, "Withdrawn", 1, b"{\"amount\":1}"));
        assert_ne!(base, event(id, "Deposited", 2, b"{\"amount\":1}"));
        assert_ne!(base, event(id, "Deposited", 1, b"{\"amount\":2}"));
        // The type's length is hashed: moving bytes between type and payload changes it.
        assert_ne!(event(id, "ab", 1, b"c"), event(id, "a", 1, b"bc"));
        assert_ne!(snapshot(1, 1, b"x"), snapshot(2, 1, b"x"));
        assert!(verify(None, base, || "here".into()).is_ok());
        assert!(verify(Some(base), base, || "here".into()).is_ok());
        let err = verify(Some(base ^ 1), base, || "stream a/b version 3".into()).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { location, .. } if location == "stream a/b version 3")
        );
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    /// Rows written with the `crc` crate's table-driven CRC-32C (before 2026-12-01)
    /// check against the same values: the two implementations agree.
    #[test]
    fn the_checksums_are_the_table_driven_crc32c() {
        static TABLE: crc::Crc<u32, crc::Table<16>> =
            crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
        let id = Uuid::from_u128(0x0192_a0c4_7e4e_7000_8000_0000_0000_0001);
        let payload = br#"{"Deposited":{"amount":1250}}"#.repeat(7);
        let mut digest = TABLE.digest();
        digest.update(id.as_bytes());
        digest.update(&9u64.to_be_bytes());
        digest.update(b"Deposited");
        digest.update(&2u32.to_be_bytes());
        digest.update(&payload);
        let table = i32::from_be_bytes(digest.finalize().to_be_bytes());
        assert_eq!(event(id, "Deposited", 2, &payload), table);
        let mut digest = TABLE.digest();
        digest.update(&41u64.to_be_bytes());
        digest.update(&1u32.to_be_bytes());
        digest.update(&payload);
        let table = i32::from_be_bytes(digest.finalize().to_be_bytes());
        assert_eq!(snapshot(41, 1, &payload), table);
    }
}
