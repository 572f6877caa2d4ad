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

const MAX_DEPTH: usize = 6;
const MAX_INDEX: usize = 10_000;

pub fn parse(body: &[u8]) -> Result<Value, FormError> {
    let mut root = Map::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[..0]),
        };
        let name = decode(name)?;
        let value = decode(value)?;
        insert(&mut root, &name, value)?;
    }
    let mut tree = Value::Object(root);
    arrays(&mut tree)?;
    Ok(tree)
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

fn insert(root: &mut Map<String, Value>, name: &str, value: String) -> Result<(), FormError> {
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
            node.insert((*last).to_owned(), Value::String(value));
            Ok(())
        }
    }
}

/// Turns objects whose keys are all indices into arrays, depth first.
fn arrays(value: &mut Value) -> Result<(), FormError> {
    let Value::Object(map) = value else {
        return Ok(());
    };
    for child in map.values_mut() {
        arrays(child)?;
    }
    let all_indices = !map.is_empty()
        && map
            .keys()
            .all(|k| !k.is_empty() && k.len() <= 5 && k.bytes().all(|b| b.is_ascii_digit()));
    if !all_indices {
        return Ok(());
    }
    let mut indexed: Vec<(usize, Value)> = Vec::with_capacity(map.len());
    for (k, v) in std::mem::take(map) {
        let i: usize = k.parse().map_err(|_| FormError::SparseIndices)?;
        if i > MAX_INDEX || (k.len() > 1 && k.starts_with('0')) {
            return Err(FormError::SparseIndices);
        }
        indexed.push((i, v));
    }
    indexed.sort_by_key(|(i, _)| *i);
    if indexed.iter().enumerate().any(|(pos, (i, _))| pos != *i) {
        return Err(FormError::SparseIndices);
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
        assert_eq!(parse(b"a=1&a=2"), Err(FormError::Duplicate));
        assert_eq!(parse(b"a=1&a.b=2"), Err(FormError::Conflict));
        assert_eq!(parse(b"a.b=2&a=1"), Err(FormError::Conflict));
        assert_eq!(parse(b"a..b=1"), Err(FormError::EmptyName));
        assert_eq!(
            parse(b"items.0.sku=a&items.2.sku=b"),
            Err(FormError::SparseIndices)
        );
        assert_eq!(parse(b"items.00.sku=a"), Err(FormError::SparseIndices));
        assert_eq!(parse(b"a=%FF"), Err(FormError::Encoding));
        assert_eq!(parse(b"a.b.c.d.e.f.g=1"), Err(FormError::TooDeep));
    }
}
