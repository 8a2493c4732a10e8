//! The validating decode path shared by every wire type in this crate.
//!
//! `calm_types::codec::decode` checks framing and postcard syntax; the types
//! here also have invariants serde cannot express (a counter bound, a
//! per-node value list no longer than its counter). Each type decodes into a
//! plain mirror of its fields first and then converts with `TryFrom`, so an
//! invariant broken by bytes from the network surfaces as
//! [`DecodeError::Invalid`] instead of a state that panics later.

use calm_types::codec::{self, DecodeError};
use serde::de::DeserializeOwned;

/// Decodes a `Raw` mirror with the shared codec, then validates it into `T`.
pub(crate) fn decode_validated<Raw, T>(bytes: &[u8]) -> Result<T, DecodeError>
where
    Raw: DeserializeOwned,
    T: TryFrom<Raw, Error = String>,
{
    let raw: Raw = codec::decode(bytes)?;
    T::try_from(raw).map_err(DecodeError::Invalid)
}

/// Checks that a counter decoded from the wire respects [`crate::COUNTER_MAX`].
pub(crate) fn check_counter(what: &str, counter: u64) -> Result<(), String> {
    if counter > crate::COUNTER_MAX {
        return Err(format!(
            "{what} counter {counter} is above the bound {}",
            crate::COUNTER_MAX
        ));
    }
    Ok(())
}
