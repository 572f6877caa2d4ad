//! Strict JSON: a body becomes a `serde_json::Value` tree, but an object
//! that names a member twice is refused (serde_json would silently keep the
//! last one, so `"third_party_sharing": false, "third_party_sharing": true`
//! would grant consent while a reviewer reads a refusal). Form bodies refuse
//! repeated names the same way (see [`super::form`]).

use std::fmt;

use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use zeroize::Zeroize;

use super::order::Wiped;

/// Why a body is not acceptable JSON. Positions and schema-shaped member
/// names only, never content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not valid JSON (line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error("an object repeats a member name (`{field}`, line {line}, column {column})")]
    Duplicate {
        line: usize,
        column: usize,
        /// The repeated member's path, dotted (`consent.special_offers`,
        /// `items.0.sku`); a name not shaped like one of ours is shown as
        /// `<unknown>` (see `order::shown_field_name`).
        field: String,
    },
}

impl JsonError {
    /// The path of the repeated member, for a problem's `errors`.
    pub fn field(&self) -> Option<&str> {
        match self {
            JsonError::Duplicate { field, .. } => Some(field),
            JsonError::Syntax { .. } => None,
        }
    }
}

pub fn parse_strict(body: &[u8]) -> Result<Value, JsonError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Strict {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| {
        let (line, column) = (e.line(), e.column());
        match duplicate.into_inner() {
            Some(mut path) if e.is_data() => {
                path.reverse();
                JsonError::Duplicate {
                    line,
                    column,
                    // Array indices as a form's: one, after a field name
                    // (nested arrays of chosen lengths spell a card number).
                    field: super::order::shown_path(&path.join(".")),
                }
            }
            _ => JsonError::Syntax { line, column },
        }
    })
}

/// The parse's state: the path of a repeated member once one is found,
/// innermost segment first — each enclosing object or array adds its own
/// segment as the error passes through it, so a body that parses pays for
/// no path at all.
#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a RefCell<Option<Vec<String>>>,
}

impl Strict<'_> {
    /// Adds `segment` (as shown) to a duplicate's path on its way out.
    fn on_the_way_out<T, E>(
        &self,
        result: Result<T, E>,
        segment: impl FnOnce() -> String,
    ) -> Result<T, E> {
        if result.is_err()
            && let Some(path) = self.duplicate.borrow_mut().as_mut()
        {
            path.push(segment());
        }
        result
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    // The partial array or object is wiped if parsing stops inside it,
    // and so is a member name that does not make it into its object.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Wiped(Vec::new());
        while let Some(v) =
            self.on_the_way_out(seq.next_element_seed(self), || items.0.len().to_string())?
        {
            items.0.push(v);
        }
        Ok(Value::Array(items.take()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Wiped(Map::new());
        while let Some(mut key) = access.next_key::<String>()? {
            let shown = || super::order::shown_field_name(&key).to_owned();
            if map.0.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(vec![shown()]);
                key.zeroize();
                return Err(de::Error::custom("duplicate member"));
            }
            match self.on_the_way_out(access.next_value_seed(self), shown) {
                Ok(value) => {
                    map.0.insert(key, value);
                }
                Err(error) => {
                    key.zeroize();
                    return Err(error);
                }
            }
        }
        Ok(Value::Object(map.take()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"b":{"c":[1,{"d":true}]}}"#).is_ok());
        assert!(matches!(
            parse_strict(br#"{"a":1,"a":2}"#),
            Err(JsonError::Duplicate { .. })
        ));
        assert!(matches!(
            parse_strict(
                br#"{"consent":{"third_party_sharing":false,"third_party_sharing":true}}"#
            ),
            Err(JsonError::Duplicate { .. })
        ));
        assert!(matches!(
            parse_strict(br#"[{"x":1,"x":1}]"#),
            Err(JsonError::Duplicate { .. })
        ));
        assert!(matches!(parse_strict(b"{"), Err(JsonError::Syntax { .. })));
        assert!(matches!(
            parse_strict(b"\xff"),
            Err(JsonError::Syntax { .. })
        ));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_strict(deep.as_bytes()).is_err());
    }

    #[test]
    fn a_duplicate_is_named_by_its_path_and_never_by_content() {
        let field = |body: &[u8]| parse_strict(body).unwrap_err().field().map(str::to_owned);
        assert_eq!(
            field(br#"{"consent":{"special_offers":false,"special_offers":true}}"#).as_deref(),
            Some("consent.special_offers")
        );
        assert_eq!(
            field(br#"{"items":[{"sku":"A"},{"sku":"B","sku":"C"}]}"#).as_deref(),
            Some("items.1.sku")
        );
        // A name that could carry a card number, an email or a person's
        // name is not echoed.
        let e = parse_strict(br#"{"customer":{"4111111111111111":1,"4111111111111111":2}}"#)
            .unwrap_err();
        assert_eq!(e.field(), Some("customer.<unknown>"));
        assert!(!e.to_string().contains("4111"), "{e}");
        // Nested arrays whose lengths spell a card number: the indices do
        // not come back (one index, after a field's name, as in a form).
        let body = format!(
            "[{}[{}[{}[{}{{\"a\":1,\"a\":2}}]]]]",
            "0,".repeat(4111),
            "0,".repeat(1111),
            "0,".repeat(1111),
            "0,".repeat(1111)
        );
        let shown = field(body.as_bytes()).unwrap_or_default();
        assert_eq!(shown, "<unknown>.<unknown>.<unknown>.<unknown>.a");
        // Siblings after a nested object: the path was left correctly.
        assert_eq!(
            field(br#"{"a":{"b":[1,{"c":2}]},"d":1,"d":2}"#).as_deref(),
            Some("d")
        );
        // Trailing content is still a syntax error.
        assert!(matches!(
            parse_strict(b"{} {}"),
            Err(JsonError::Syntax { .. })
        ));
    }
}
