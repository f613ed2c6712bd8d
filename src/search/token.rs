//! Opaque page tokens: which query a page belongs to, and where the next one starts.
//!
//! A token is the first 8 bytes of the sha256 of the query (kind, known entity, action, type,
//! context; not the page size) and the last id answered, in hex. A token presented with any
//! other query is refused, so a caller cannot page through one query and land in another.

use sha2::{Digest, Sha256};

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this daemon made.
    #[error("page.token is not a page token of this API")]
    Malformed,
    /// A token of another query.
    #[error("page.token belongs to a different query; a later page must repeat the query")]
    OtherQuery,
}

const HASH_HEX: usize = 16;

/// The hash of a query's parts, as the token holds it.
pub fn query_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex(&hasher.finalize()[..HASH_HEX / 2])
}

/// The token of the page after `last` (the last id answered).
pub fn encode(hash: &str, last: &str) -> String {
    format!("{hash}{}", hex(last.as_bytes()))
}

/// The id a token resumes after, checked against the query's `hash`.
pub fn decode(token: &str, hash: &str) -> Result<String, TokenError> {
    if !token.is_ascii() || token.len() < HASH_HEX {
        return Err(TokenError::Malformed);
    }
    let (theirs, last) = token.split_at(HASH_HEX);
    let bytes = unhex(last).ok_or(TokenError::Malformed)?;
    let last = String::from_utf8(bytes).map_err(|_| TokenError::Malformed)?;
    if theirs != hash {
        return Err(TokenError::OtherQuery);
    }
    Ok(last)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_other_queries() {
        let h = query_hash(&["resource", "User::\"bob\"", "view"]);
        let t = encode(&h, "d-ü 7");
        assert_eq!(decode(&t, &h).unwrap(), "d-ü 7");
        let other = query_hash(&["resource", "User::\"eve\"", "view"]);
        assert_eq!(decode(&t, &other), Err(TokenError::OtherQuery));
        assert_eq!(decode("zz", &h), Err(TokenError::Malformed));
        assert_eq!(decode(&format!("{h}0"), &h), Err(TokenError::Malformed));
        assert_eq!(decode(&encode(&h, ""), &h).unwrap(), "");
        // Length-prefixed parts: moving a boundary changes the hash.
        assert_ne!(query_hash(&["ab", "c"]), query_hash(&["a", "bc"]));
    }
}
