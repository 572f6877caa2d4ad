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
    Syntax {
        line: usize,
        column: usize,
        /// The path of the member or element where it went wrong, shown as
        /// for a duplicate (`None`: outside any member, or in a name).
        field: Option<String>,
    },
    /// A number RFC 8259 allows but no 64-bit float holds (`1e400`).
    #[error("a number is too large to represent (`{field}`, line {line}, column {column})")]
    NumberOutOfRange {
        line: usize,
        column: usize,
        field: String,
    },
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
    /// The path where the body went wrong, for a problem's `errors`.
    pub fn field(&self) -> Option<&str> {
        match self {
            JsonError::Duplicate { field, .. } | JsonError::NumberOutOfRange { field, .. } => {
                Some(field)
            }
            JsonError::Syntax { field, .. } => field.as_deref(),
        }
    }

    /// The code of the problem's `errors` entry for [`Self::field`].
    pub fn code(&self) -> &'static str {
        match self {
            JsonError::Duplicate { .. } => "duplicate_field",
            JsonError::NumberOutOfRange { .. } => "out_of_range",
            JsonError::Syntax { .. } => "invalid_json",
        }
    }

    /// The message of that entry.
    pub fn message(&self) -> &'static str {
        match self {
            JsonError::Duplicate { .. } => "This member is given more than once",
            JsonError::NumberOutOfRange { .. } => "This number is too large to represent",
            JsonError::Syntax { .. } => "The JSON is malformed here",
        }
    }
}

pub fn parse_strict(body: &[u8]) -> Result<Value, JsonError> {
    let path = RefCell::new(Vec::new());
    let duplicate = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Strict {
        path: &path,
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let mut path = path.into_inner();
        path.reverse();
        // Array indices as a form's: one, after a field name (nested
        // arrays of chosen lengths spell a card number).
        let field = (!path.is_empty()).then(|| super::order::shown_path(&path.join(".")));
        match field {
            Some(field) if duplicate.get() && e.is_data() => JsonError::Duplicate {
                line,
                column,
                field,
            },
            // serde_json names no error code publicly; its message for a
            // number beyond f64 is fixed (a unit test pins it).
            Some(field) if e.is_syntax() && e.to_string().starts_with("number out of range") => {
                JsonError::NumberOutOfRange {
                    line,
                    column,
                    field,
                }
            }
            field => JsonError::Syntax {
                line,
                column,
                field,
            },
        }
    })
}

/// The parse's state: the path where it went wrong, innermost segment
/// first — each enclosing object or array adds its own segment as the error
/// passes through it, so a body that parses pays for no path at all — and
/// whether that was a repeated member.
#[derive(Clone, Copy)]
struct Strict<'a> {
    path: &'a RefCell<Vec<String>>,
    duplicate: &'a std::cell::Cell<bool>,
}

impl Strict<'_> {
    /// Adds `segment` (as shown) to the error's path on its way out.
    fn on_the_way_out<T, E>(
        &self,
        result: Result<T, E>,
        segment: impl FnOnce() -> String,
    ) -> Result<T, E> {
        if result.is_err() {
            self.path.borrow_mut().push(segment());
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
                self.duplicate.set(true);
                self.path.borrow_mut().push(shown());
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
            Err(JsonError::Syntax { field: None, .. })
        ));
    }

    /// Any error inside a member is named by the member's path, as shown
    /// for a duplicate; a number beyond a 64-bit float is its own error
    /// (serde_json's message for it is what tells it apart: if a new
    /// serde_json words it otherwise, this fails).
    #[test]
    fn an_error_inside_a_member_names_its_path() {
        let e = parse_strict(br#"{"items":[{"sku":"A","quantity":1e400}]}"#).unwrap_err();
        assert!(
            matches!(&e, JsonError::NumberOutOfRange { field, .. } if field == "items.0.quantity"),
            "{e:?}"
        );
        assert_eq!(
            (e.field(), e.code()),
            (Some("items.0.quantity"), "out_of_range")
        );
        let e = parse_strict(br#"{"card":{"exp_month":-1e999}}"#).unwrap_err();
        assert_eq!(
            (e.field(), e.code()),
            (Some("card.exp_month"), "out_of_range")
        );
        // A plain syntax error names where it stopped.
        let e = parse_strict(br#"{"customer":{"email":"a@b.example",}}"#).unwrap_err();
        assert_eq!((e.field(), e.code()), (Some("customer"), "invalid_json"));
        let e = parse_strict(br#"{"items":[{"sku":"A"},{"sku":tru}]}"#).unwrap_err();
        assert_eq!((e.field(), e.code()), (Some("items.1.sku"), "invalid_json"));
        // Outside any member: no field.
        assert_eq!(parse_strict(b"1e400").unwrap_err().field(), None);
        assert_eq!(parse_strict(b"{").unwrap_err().field(), None);
        // Never content: a name or index that could spell a card number.
        let e = parse_strict(br#"{"4111111111111111":1e400}"#).unwrap_err();
        assert_eq!(e.field(), Some("<unknown>"));
        assert!(!e.to_string().contains("4111"), "{e}");
        // A path starts afresh for each parse, and an error after a
        // member that parsed does not name that member.
        // (An index after a name other than `items` is not shown.)
        let e = parse_strict(br#"{"a":{"b":1},"c":[1,2,}"#).unwrap_err();
        assert_eq!(e.field(), Some("c.<unknown>"));
    }
}
