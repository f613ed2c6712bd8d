//! Revision tokens: an opaque string naming an upstream and one of its revisions.
//!
//! A token is the URL-safe base64 (no padding) of `pd1:<upstream id>:<revision>`. Callers
//! treat it as opaque; policyd refuses a token that is not one, or that names another
//! upstream (a revision number means nothing in another database).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "pd1:";

/// A decoded token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The upstream's id.
    pub upstream: String,
    /// The revision.
    pub revision: i64,
}

/// The token for `revision` of `upstream`.
pub fn encode(upstream: &str, revision: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}{upstream}:{revision}"))
}

/// Reads a token; the error says what is wrong with it.
pub fn decode(text: &str) -> Result<Token, String> {
    let bad = || format!("`{text}` is not a policyd revision token");
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| bad())?;
    let plain = String::from_utf8(bytes).map_err(|_| bad())?;
    let rest = plain.strip_prefix(PREFIX).ok_or_else(bad)?;
    let (upstream, revision) = rest.rsplit_once(':').ok_or_else(bad)?;
    let revision: i64 = revision.parse().map_err(|_| bad())?;
    if upstream.is_empty() || revision < 0 {
        return Err(bad());
    }
    Ok(Token {
        upstream: upstream.to_owned(),
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_anything_else() {
        let t = encode("1b4e28ba-2fa1-11d2-883f-0016d3cca427", 42);
        assert!(!t.contains("42"), "opaque: {t}");
        assert_eq!(
            decode(&t),
            Ok(Token {
                upstream: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".to_owned(),
                revision: 42
            })
        );
        for bad in ["", "42", "not base64!", &URL_SAFE_NO_PAD.encode("pd1:x:y")] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert!(decode(&URL_SAFE_NO_PAD.encode("pd1::3")).is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode("pd2:x:3")).is_err());
    }
}
