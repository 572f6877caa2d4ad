//! `application/x-www-form-urlencoded` order forms → the same JSON-shaped
//! tree the JSON parser produces, so one validator serves both.
//!
//! Names are dotted paths (`billing_address.line1`, `items.0.sku`); an
//! object whose keys are all decimal indices becomes an array (indices must
//! run 0, 1, 2, … without gaps). Every leaf is a string; the validator reads
//! numbers and checkboxes from strings when the source is a form. Names and
//! values must be valid UTF-8 after percent-decoding. A name given twice, or
//! used both as a value and as an object, is malformed (400).

use percent_encoding::percent_decode;
use serde_json::{Map, Value};
use zeroize::Zeroize;

use super::order::{Wiped, scrub};

/// Why a form body is malformed. Carries no input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the form body is not valid UTF-8 after percent-decoding")]
    Encoding,
    #[error("a field name is empty or has an empty segment")]
    EmptyName,
    #[error("a field is given more than once")]
    Duplicate,
    #[error("a field is used both as a value and as a group of fields")]
    Conflict,
    #[error("list indices must be 0, 1, 2, … without gaps")]
    SparseIndices,
    #[error("the form nests too deeply")]
    TooDeep,
}

impl FormError {
    /// The stable code of the field error naming the field.
    pub fn code(self) -> &'static str {
        match self {
            FormError::Encoding => "invalid_encoding",
            FormError::EmptyName => "empty_name",
            FormError::Duplicate => "duplicate_field",
            FormError::Conflict => "conflicting_field",
            FormError::SparseIndices => "invalid_index",
            FormError::TooDeep => "too_deep",
        }
    }

    /// The same text as `Display`, as a static string for a field error.
    pub fn message(self) -> &'static str {
        match self {
            FormError::Encoding => "Not valid UTF-8 after percent-decoding",
            FormError::EmptyName => "A field name is empty or has an empty segment",
            FormError::Duplicate => "This field is given more than once",
            FormError::Conflict => "This field is used both as a value and as a group of fields",
            FormError::SparseIndices => "List indices must be 0, 1, 2, … without gaps",
            FormError::TooDeep => "This field nests too deeply",
        }
    }
}

/// A malformed form body: why, and the field when it can be named (as
/// `order::shown_field_name` shows names: a segment not shaped like one of
/// ours is `<unknown>`, so no client-chosen text is echoed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Malformed {
    pub error: FormError,
    pub field: Option<String>,
}

impl Malformed {
    fn at(error: FormError, name: &str) -> Self {
        Malformed {
            error,
            field: Some(super::order::shown_path(name)),
        }
    }
}

impl From<FormError> for Malformed {
    fn from(error: FormError) -> Self {
        Malformed { error, field: None }
    }
}

const MAX_DEPTH: usize = 6;
const MAX_INDEX: usize = 10_000;

pub fn parse(body: &[u8]) -> Result<Value, Malformed> {
    // Wiped if the body turns out malformed part way (a duplicate, a gap in
    // the indices): no card number or CVC stays behind unwiped.
    let mut root = Wiped(Map::new());
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[..0]),
        };
        let mut name = decode(name)?;
        let mut value = match decode(value) {
            Ok(value) => value,
            Err(error) => {
                // The name decoded: the error names its field.
                let malformed = Malformed::at(error, &name);
                name.zeroize();
                return Err(malformed);
            }
        };
        let inserted = insert(&mut root.0, &name, &mut value).map_err(|error| match error {
            FormError::EmptyName => Malformed::from(error),
            _ => Malformed::at(error, &name),
        });
        // Taken into the tree, or refused: wiped either way.
        value.zeroize();
        name.zeroize();
        inserted?;
    }
    let mut tree = Wiped(Value::Object(root.take()));
    arrays(&mut tree.0, &mut Vec::new())?;
    Ok(tree.take())
}

fn decode(raw: &[u8]) -> Result<String, FormError> {
    // Both buffers are sized up front (decoding never lengthens), so no
    // reallocation leaves an unwiped copy of a card number behind.
    let mut plus_as_space = Vec::with_capacity(raw.len());
    plus_as_space.extend(raw.iter().map(|b| if *b == b'+' { b' ' } else { *b }));
    let mut decoded = Vec::with_capacity(raw.len());
    decoded.extend(percent_decode(&plus_as_space));
    plus_as_space.zeroize();
    String::from_utf8(decoded).map_err(|e| {
        let mut bytes = e.into_bytes();
        bytes.zeroize();
        FormError::Encoding
    })
}

/// Puts `value` at `name` in the tree, taking it (`value` is left empty);
/// refused, `value` stays with the caller.
fn insert(root: &mut Map<String, Value>, name: &str, value: &mut String) -> Result<(), FormError> {
    let segments: Vec<&str> = name.split('.').collect();
    if segments.len() > MAX_DEPTH {
        return Err(FormError::TooDeep);
    }
    if segments.iter().any(|s| s.is_empty()) {
        return Err(FormError::EmptyName);
    }
    let (last, parents) = segments.split_last().ok_or(FormError::EmptyName)?;
    let mut node = root;
    for segment in parents {
        let entry = node
            .entry((*segment).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        node = match entry {
            Value::Object(map) => map,
            _ => return Err(FormError::Conflict),
        };
    }
    match node.get(*last) {
        Some(Value::Object(_)) => Err(FormError::Conflict),
        Some(_) => Err(FormError::Duplicate),
        None => {
            node.insert((*last).to_owned(), Value::String(std::mem::take(value)));
            Ok(())
        }
    }
}

/// Turns objects whose keys are all indices into arrays, depth first;
/// `path` is where `value` is.
fn arrays(value: &mut Value, path: &mut Vec<String>) -> Result<(), Malformed> {
    let Value::Object(map) = value else {
        return Ok(());
    };
    for (key, child) in map.iter_mut() {
        path.push(key.clone());
        arrays(child, path)?;
        path.pop();
    }
    let sparse = || Malformed::at(FormError::SparseIndices, &path.join("."));
    let all_indices = !map.is_empty()
        && map
            .keys()
            .all(|k| !k.is_empty() && k.len() <= 5 && k.bytes().all(|b| b.is_ascii_digit()));
    if !all_indices {
        return Ok(());
    }
    // Every entry is moved out first, then judged: refused, they are all
    // wiped (the caller's tree no longer holds them).
    let mut indexed: Vec<(Option<usize>, Value)> = Vec::with_capacity(map.len());
    for (k, v) in std::mem::take(map) {
        let i = k
            .parse::<usize>()
            .ok()
            .filter(|&i| i <= MAX_INDEX && !(k.len() > 1 && k.starts_with('0')));
        indexed.push((i, v));
    }
    indexed.sort_by_key(|(i, _)| *i);
    if indexed
        .iter()
        .enumerate()
        .any(|(pos, (i, _))| *i != Some(pos))
    {
        indexed.into_iter().for_each(|(_, v)| scrub(v));
        return Err(sparse());
    }
    *value = Value::Array(indexed.into_iter().map(|(_, v)| v).collect());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_names_become_a_tree_with_arrays() {
        let tree = parse(b"customer.name=Ada+L%C3%B6velace&items.1.sku=B&items.0.sku=A&consent.special_offers=on&x").unwrap();
        assert_eq!(
            tree,
            json!({"customer": {"name": "Ada Lövelace"}, "items": [{"sku": "A"}, {"sku": "B"}],
                   "consent": {"special_offers": "on"}, "x": ""})
        );
    }

    #[test]
    fn malformed_forms() {
        let fault = |body: &[u8]| parse(body).map_err(|m| m.error);
        assert_eq!(fault(b"a=1&a=2"), Err(FormError::Duplicate));
        assert_eq!(fault(b"a=1&a.b=2"), Err(FormError::Conflict));
        assert_eq!(fault(b"a.b=2&a=1"), Err(FormError::Conflict));
        assert_eq!(fault(b"a..b=1"), Err(FormError::EmptyName));
        assert_eq!(
            fault(b"items.0.sku=a&items.2.sku=b"),
            Err(FormError::SparseIndices)
        );
        assert_eq!(fault(b"items.00.sku=a"), Err(FormError::SparseIndices));
        assert_eq!(fault(b"a=%FF"), Err(FormError::Encoding));
        assert_eq!(fault(b"a.b.c.d.e.f.g=1"), Err(FormError::TooDeep));
    }

    #[test]
    fn a_malformed_form_names_the_field_without_echoing_client_text() {
        let field = |body: &[u8]| parse(body).unwrap_err().field;
        assert_eq!(
            field(b"consent.special_offers=on&consent.special_offers=off"),
            Some("consent.special_offers".to_owned())
        );
        assert_eq!(
            field(b"items.0.sku=a&items.0=b"),
            Some("items.0".to_owned())
        );
        assert_eq!(
            field(b"items.0.sku=a&items.2.sku=b"),
            Some("items".to_owned())
        );
        // A name that is not one of ours is not echoed.
        assert_eq!(
            field(b"customer.Ada4111111111111111=1&customer.Ada4111111111111111=2"),
            Some("customer.<unknown>".to_owned())
        );
        assert_eq!(field(b"a..b=1"), None);
        // A value that is not UTF-8 is named by its field; a name that is
        // not cannot be.
        assert_eq!(field(b"card.number=%FF"), Some("card.number".to_owned()));
        assert_eq!(field(b"a%FF=1"), None);
        // A name made of digit groups is a card number: no digits of it
        // come back, whichever error names it (a value that is not UTF-8,
        // a duplicate, a gap in the indices).
        for body in [
            &b"4111.1111.1111.1111=%FF"[..],
            b"a=1&4111.1111.1111.1111=1&4111.1111.1111.1111=2",
            b"4111.1111.1111.1111=1",
            b"items.4111.1111.1111.1111=1",
            b"items.0.4111.1111.1111=%FF",
            b"a.41111.b.11111.c.11111=%FF",
        ] {
            let shown = field(body).unwrap_or_default();
            let digits = shown.bytes().filter(u8::is_ascii_digit).count();
            assert!(digits <= 5, "{}: {shown}", String::from_utf8_lossy(body));
        }
        assert_eq!(field(b"items.0.sku=%FF"), Some("items.0.sku".to_owned()));
        assert_eq!(
            field(b"billing_address.line1=a&billing_address.line1=b"),
            Some("billing_address.line1".to_owned())
        );
    }
}
