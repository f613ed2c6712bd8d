//! Entity uids from text: fast for the forms clients and the store send, exact always.
//!
//! Cedar's own parser builds a uid from `User::"alice"` through its full grammar, which costs
//! more than evaluating a policy. Requests and stored entities name a handful of entity types
//! and spell uids canonically, so this module remembers parsed type names (per thread) and
//! reads a canonical `Type::"id"` directly. Anything else (escapes, odd spacing, an invalid
//! name) goes to Cedar's parser, so the answer, or the error, is always Cedar's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};

/// Distinct type names remembered per thread; beyond it names are parsed each time.
const REMEMBERED_TYPES: usize = 1024;

thread_local! {
    static TYPE_NAMES: RefCell<HashMap<String, Option<EntityTypeName>>> =
        RefCell::new(HashMap::new());
}

/// Parses an entity type name as Cedar does (`EntityTypeName::from_str`), remembering it.
pub fn type_name(name: &str) -> Result<EntityTypeName, String> {
    let remembered = TYPE_NAMES.with(|cache| cache.borrow().get(name).cloned());
    let parsed = match remembered {
        Some(Some(t)) => return Ok(t),
        Some(None) => None,
        None => {
            let parsed = EntityTypeName::from_str(name).ok();
            TYPE_NAMES.with(|cache| {
                let mut cache = cache.borrow_mut();
                if cache.len() < REMEMBERED_TYPES {
                    cache.insert(name.to_owned(), parsed.clone());
                }
            });
            parsed
        }
    };
    parsed.ok_or_else(|| match EntityTypeName::from_str(name) {
        Err(e) => format!("invalid entity type `{name}`: {e}"),
        Ok(_) => format!("invalid entity type `{name}`"),
    })
}

/// Builds a uid from a type name and a raw id (any string, unescaped).
pub fn from_parts(ty: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        type_name(ty)?,
        EntityId::new(id),
    ))
}

/// Parses a uid written as Cedar text (`User::"alice"`), exactly as
/// `EntityUid::from_str` does: only the normalized form is accepted.
pub fn from_text(text: &str) -> Result<EntityUid, Box<cedar_policy::ParseErrors>> {
    match canonical(text) {
        Some(uid) => Ok(uid),
        None => EntityUid::from_str(text).map_err(Box::new),
    }
}

/// The uid of `Type::"id"` when the text is exactly how Cedar prints that uid (so Cedar's
/// normalized parser would accept it and read the same type and id); `None` otherwise.
fn canonical(text: &str) -> Option<EntityUid> {
    let quote = text.find('"')?;
    let ty = text[..quote].strip_suffix("::")?;
    let id = text[quote + 1..].strip_suffix('"')?;
    // Cedar prints ids with `escape_debug`: an id that needs no escaping is printed verbatim.
    if id.contains(['"', '\\']) || !id.escape_debug().eq(id.chars()) {
        return None;
    }
    let name = type_name(ty).ok()?;
    // A name Cedar accepts but prints differently (spacing, say) is not normalized.
    if name.to_string() != ty {
        return None;
    }
    Some(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path agrees with Cedar's parser, answer and refusal alike.
    #[test]
    fn text_uids_parse_exactly_like_cedar() {
        for text in [
            r#"User::"alice""#,
            r#"Acme::Doc::"a b""#,
            r#"User::"""#,
            r#"User::"café""#,
            r#"User::"\n""#,
            r#"User::"a\"b""#,
            r#"User::"tab	""#,
            "User::\"\u{301}x\"",
            r#"User ::"a""#,
            r#"User::  "a""#,
            r#"if::"a""#,
            r#"User::"a"x"#,
            r#"::"a""#,
            r#"User::a"#,
            r#"Us er::"a""#,
            r#"User::"a\u{0}""#,
        ] {
            let cedar = EntityUid::from_str(text).map_err(|e| e.to_string());
            let ours = from_text(text).map_err(|e| e.to_string());
            assert_eq!(ours, cedar, "{text}");
            if let Ok(uid) = &ours {
                let fast = canonical(text);
                assert!(fast.is_none() || fast.as_ref() == Some(uid), "{text}");
            }
        }
        assert!(
            canonical(r#"User::"alice""#).is_some(),
            "the common form is fast"
        );
    }

    #[test]
    fn type_names_are_remembered_and_refusals_explained() {
        assert_eq!(type_name("Acme::Doc").unwrap().to_string(), "Acme::Doc");
        assert_eq!(type_name("Acme::Doc").unwrap().to_string(), "Acme::Doc");
        let err = type_name("not a type").unwrap_err();
        assert!(err.contains("not a type"), "{err}");
        assert_eq!(type_name("not a type").unwrap_err(), err);
    }
}
