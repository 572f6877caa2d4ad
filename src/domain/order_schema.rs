//! The order form's OpenAPI schema, kept beside its parser ([`super::order`]).
//!
//! The parser is hand-written (it must zeroize what it drops and report every
//! violation at once), so these types are never deserialised: they only
//! *describe* what [`super::order::parse`] accepts. The tests below prove the
//! two agree — a document built from the schema's examples is accepted as JSON
//! and as a form, removing any member the schema calls required is reported
//! `required` at that path, removing any other member is still accepted, and a
//! member the schema does not name is rejected — so neither can change alone.
//!
//! The form-encoded variant (`application/x-www-form-urlencoded`) is the same
//! tree flattened with dots ([`super::form`]); [`form_schema`] derives it from
//! the JSON schema rather than restating it.

#![allow(dead_code)] // The structs exist for their derived schemas only.

use serde_json::{Map, Value, json};
use utoipa::ToSchema;

/// An order as the storefront submits it (DESIGN.md "The order form").
/// Unknown members are rejected; `null` counts as absent.
#[derive(serde::Deserialize, ToSchema)]
#[schema(as = OrderRequest)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// The storefront's own reference (stored in clear: must not look like a
    /// card number, an email address or a phone number written with `+`).
    #[schema(max_length = 256, example = "A-1001")]
    storefront_order_ref: Option<String>,
    customer: CustomerIn,
    billing_address: AddressIn,
    /// Where to ship; the billing address when absent. Not stored when a
    /// gift recipient is given.
    shipping_address: Option<AddressIn>,
    /// Ship to someone else; their details are used only to deliver.
    gift_recipient: Option<GiftRecipientIn>,
    /// 1–100 items; their total (Σ quantity × unit price) at most
    /// 9007199254740991 minor units (2^53 − 1, exact in every JSON reader).
    #[schema(min_items = 1, max_items = 100)]
    items: Vec<ItemIn>,
    /// ISO 4217 code of a current currency with minor units (not a fund
    /// code such as BOV, not a withdrawn one such as HRK).
    #[schema(min_length = 3, max_length = 3, example = "USD")]
    currency: String,
    card: CardIn,
    consent: ConsentIn,
}

/// The customer (billing contact).
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerIn {
    #[schema(min_length = 1, max_length = 256, example = "Ada Lovelace")]
    name: String,
    #[schema(max_length = 256, example = "Analytical Engines Ltd")]
    company: Option<String>,
    #[schema(schema_with = crate::domain::contact::email_schema)]
    email: String,
    /// 7 to 20 digits, optionally a leading `+` and spaces, dashes, dots,
    /// slashes or parentheses.
    #[schema(min_length = 7, max_length = 40, example = "+1 949 555 0100")]
    phone: String,
}

/// A postal address.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressIn {
    #[schema(min_length = 1, max_length = 256, example = "51 Columbia")]
    line1: String,
    #[schema(max_length = 256, example = "Suite 200")]
    line2: Option<String>,
    #[schema(min_length = 1, max_length = 256, example = "Aliso Viejo")]
    city: String,
    #[schema(max_length = 256, example = "CA")]
    region: Option<String>,
    #[schema(min_length = 1, max_length = 32, example = "92656")]
    postal_code: String,
    /// ISO 3166-1 alpha-2 code.
    #[schema(min_length = 2, max_length = 2, example = "US")]
    country: String,
}

/// A gift recipient: name and address are mandatory.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GiftRecipientIn {
    #[schema(min_length = 1, max_length = 256, example = "Charles Babbage")]
    name: String,
    address: AddressIn,
    #[schema(min_length = 7, max_length = 40, example = "+44 20 7946 0000")]
    phone: Option<String>,
    /// May span lines.
    #[schema(max_length = 1000, example = "Happy birthday")]
    message: Option<String>,
}

/// One line of the order.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemIn {
    /// Stored in clear, as is the description: neither may look like a
    /// card number, an email address or a phone number written with `+`.
    #[schema(min_length = 1, max_length = 64, example = "FAXSTF-PRO")]
    sku: String,
    #[schema(max_length = 256, example = "Fax stuff, professional edition")]
    description: Option<String>,
    #[schema(minimum = 1, maximum = 10000, example = 1)]
    quantity: i64,
    #[schema(minimum = 0, maximum = 100000000000_i64, example = 4999)]
    unit_price_minor: i64,
}

/// Card data. The CVC is checked and discarded, never stored.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardIn {
    /// Digits, optionally grouped by spaces or dashes; passes Luhn, with a
    /// length valid for its brand.
    #[schema(min_length = 12, max_length = 23, example = "4012 8888 8888 1881")]
    number: String,
    #[schema(minimum = 1, maximum = 12, example = 12)]
    exp_month: i64,
    #[schema(schema_with = exp_year_schema)]
    exp_year: i64,
    /// 3 digits, or 4 for American Express.
    #[schema(min_length = 3, max_length = 4, example = "123")]
    cvc: String,
    #[schema(max_length = 256, example = "Ada Lovelace")]
    holder_name: Option<String>,
}

/// The consent choices made at checkout; an absent purpose is `false`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentIn {
    #[schema(example = false)]
    product_updates: Option<bool>,
    #[schema(example = false)]
    new_offerings: Option<bool>,
    #[schema(example = false)]
    partnerships: Option<bool>,
    #[schema(example = true)]
    special_offers: Option<bool>,
    #[schema(example = false)]
    third_party_sharing: Option<bool>,
    /// A privacy-policy version the server knows ("last updated" date).
    #[schema(example = "2002-06-05")]
    policy_version: String,
    /// When the customer submitted the checkout form (RFC 3339 with an
    /// offset; at most 5 minutes ahead of the server's clock — kept as no
    /// later than when checkoutd took the order — and at most 7 days old). Send it, and send the same value when retrying: an order
    /// retried after an opt-out the customer sent meanwhile then keeps its
    /// place before that opt-out instead of granting consent again.
    /// Absent, the choices count from when checkoutd took the order.
    #[schema(format = DateTime, example = "2026-11-29T17:05:00Z")]
    captured_at: Option<String>,
}

/// The form-encoded order: the JSON schema flattened with dots. `items`
/// become `items.0.sku`, `items.1.sku`, … (listed for the first item; the
/// pattern covers the rest). Every value is text; numbers are decimal and a
/// checkbox is true for `on`, `true`, `1`, `yes`, `y` and false for an
/// empty value, `off`, `false`, `0`, `no`, `n` (see `order::Reader::boolean`).
pub fn form_schema(json_schema: &Value, components: &Map<String, Value>) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut patterns = Map::new();
    flatten(
        json_schema,
        components,
        "",
        true,
        &mut properties,
        &mut required,
        &mut patterns,
    );
    json!({
        "type": "object",
        "description": "The order form flattened with dots (see OrderRequest).",
        "properties": properties,
        "required": required,
        "patternProperties": patterns,
        "additionalProperties": false,
    })
}

fn resolve<'a>(schema: &'a Value, components: &'a Map<String, Value>) -> &'a Value {
    // `$ref` directly, or wrapped in `oneOf: [{type: null}, {$ref}]` for an
    // optional member.
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        return components
            .get(name)
            .map_or(schema, |s| resolve(s, components));
    }
    if let Some(Value::Array(alts)) = schema.get("oneOf")
        && let Some(inner) = alts.iter().find(|a| a.get("type") != Some(&json!("null")))
    {
        return resolve(inner, components);
    }
    schema
}

fn form_leaf(schema: &Value) -> Value {
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut leaf = Map::new();
    leaf.insert("type".into(), json!("string"));
    if types.contains(&"integer") {
        leaf.insert("pattern".into(), json!("^ *-?[0-9]+ *$"));
    } else if types.contains(&"boolean") {
        leaf.insert(
            "enum".into(),
            json!([
                "", "on", "true", "1", "yes", "y", "off", "false", "0", "no", "n"
            ]),
        );
    } else {
        for k in [
            "minLength",
            "maxLength",
            "pattern",
            "description",
            "example",
            "examples",
        ] {
            if let Some(v) = schema.get(k) {
                leaf.insert(k.into(), v.clone());
            }
        }
    }
    Value::Object(leaf)
}

fn flatten(
    schema: &Value,
    components: &Map<String, Value>,
    prefix: &str,
    parent_required: bool,
    properties: &mut Map<String, Value>,
    required: &mut Vec<String>,
    patterns: &mut Map<String, Value>,
) {
    let schema = resolve(schema, components);
    let names: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(Value::Object(props)) = schema.get("properties") else {
        return;
    };
    for (name, member) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let member_required = parent_required && names.contains(&name.as_str());
        let member = resolve(member, components);
        if member.get("properties").is_some() {
            flatten(
                member,
                components,
                &path,
                member_required,
                properties,
                required,
                patterns,
            );
        } else if let Some(items) = member.get("items") {
            let item = resolve(items, components);
            let first = format!("{path}.0");
            flatten(
                item,
                components,
                &first,
                member_required,
                properties,
                required,
                patterns,
            );
            if let Some(Value::Object(item_props)) = item.get("properties") {
                for (leaf_name, leaf) in item_props {
                    patterns.insert(
                        format!("^{path}\\.[1-9][0-9]{{0,3}}\\.{leaf_name}$"),
                        form_leaf(resolve(leaf, components)),
                    );
                }
            }
        } else {
            properties.insert(path.clone(), form_leaf(member));
            if member_required {
                required.push(path);
            }
        }
    }
}

/// `card.exp_year`: four digits, the expiry not in the past, the year at
/// most [`MAX_YEARS_AHEAD`](super::expiry::MAX_YEARS_AHEAD) ahead of the
/// year the description was made in.
fn exp_year_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let this_year = i64::from(time::OffsetDateTime::now_utc().year());
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(2000))
        .maximum(Some(this_year + super::expiry::MAX_YEARS_AHEAD))
        .description(Some(
            "Four digits; the expiry must not be in the past nor more than 20 years ahead.",
        ))
        .examples([serde_json::json!(this_year + 5)])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::{Rules, Source, parse};
    use crate::http::FieldError;
    use utoipa::OpenApi;

    #[derive(OpenApi)]
    #[openapi(components(schemas(OrderRequest)))]
    struct Doc;

    fn components() -> Map<String, Value> {
        let doc = serde_json::to_value(Doc::openapi()).unwrap();
        doc["components"]["schemas"].as_object().unwrap().clone()
    }

    /// A document with every member the schema names, each set to its
    /// example; `all` false keeps only the required ones.
    fn sample(schema: &Value, components: &Map<String, Value>, all: bool) -> Value {
        let schema = resolve(schema, components);
        if let Some(Value::Object(props)) = schema.get("properties") {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut out = Map::new();
            for (name, member) in props {
                if all || required.contains(&name.as_str()) {
                    out.insert(name.clone(), sample(member, components, all));
                }
            }
            return Value::Object(out);
        }
        if let Some(items) = schema.get("items") {
            return json!([sample(items, components, all)]);
        }
        schema
            .get("example")
            .or_else(|| schema.get("examples").and_then(|e| e.get(0)))
            .cloned()
            .unwrap_or_else(|| panic!("schema member without an example: {schema}"))
    }

    /// Every (path, is_required) leaf or object member of the schema.
    fn members(
        schema: &Value,
        components: &Map<String, Value>,
        prefix: &str,
        out: &mut Vec<(String, bool)>,
    ) {
        let schema = resolve(schema, components);
        let schema = schema
            .get("items")
            .map_or(schema, |i| resolve(i, components));
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (name, member) in props {
                let is_list = resolve(member, components).get("items").is_some();
                let path = match (prefix.is_empty(), is_list) {
                    (true, false) => name.clone(),
                    (true, true) => format!("{name}.0"),
                    (false, false) => format!("{prefix}.{name}"),
                    (false, true) => format!("{prefix}.{name}.0"),
                };
                let shown = path.strip_suffix(".0").unwrap_or(&path).to_owned();
                out.push((shown, required.contains(&name.as_str())));
                members(member, components, &path, out);
            }
        }
    }

    fn rules() -> (Vec<String>, time::OffsetDateTime) {
        (
            vec!["2002-06-05".to_owned()],
            time::macros::datetime!(2026-11-29 17:10 UTC),
        )
    }

    fn check(tree: Value, source: Source) -> Result<(), Vec<FieldError>> {
        let (versions, now) = rules();
        parse(
            tree,
            source,
            &Rules {
                policy_versions: &versions,
                now,
            },
        )
        .map(|_| ())
    }

    fn remove(tree: &mut Value, path: &str) {
        let mut node = tree;
        let segments: Vec<&str> = path.split('.').collect();
        let (last, parents) = segments.split_last().unwrap();
        for s in parents {
            node = match s.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => &mut node[*s],
            };
        }
        node.as_object_mut().unwrap().remove(*last);
    }

    fn to_form(tree: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match tree {
            Value::Object(m) => m.iter().for_each(|(k, v)| to_form(v, &join(k), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| to_form(v, &join(&i.to_string()), out)),
            Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            Value::Bool(b) => out.push((prefix.to_owned(), if *b { "on" } else { "off" }.into())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }

    #[test]
    fn samples_from_the_schema_are_accepted_as_json_and_as_a_form() {
        let c = components();
        let root = &c["OrderRequest"];
        for all in [false, true] {
            let doc = sample(root, &c, all);
            check(doc.clone(), Source::Json).unwrap();
            let mut fields = Vec::new();
            to_form(&doc, "", &mut fields);
            let body: String = fields
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        k,
                        percent_encoding::utf8_percent_encode(
                            v,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    )
                })
                .collect::<Vec<_>>()
                .join("&");
            let tree = crate::domain::form::parse(body.as_bytes()).unwrap();
            check(tree, Source::Form).unwrap();
            // The form schema names exactly the flattened members.
            let form = form_schema(root, &c);
            for (name, _) in &fields {
                assert!(
                    form["properties"].get(name).is_some(),
                    "form schema lacks {name}"
                );
            }
        }
    }

    #[test]
    fn required_members_in_the_schema_are_exactly_those_the_parser_requires() {
        let c = components();
        let root = &c["OrderRequest"];
        let full = sample(root, &c, true);
        let mut all = Vec::new();
        members(root, &c, "", &mut all);
        assert!(all.len() > 30, "walked too few members: {all:?}");
        for (path, required) in all {
            let mut doc = full.clone();
            remove(&mut doc, &path);
            let result = check(doc, Source::Json);
            if required {
                let errors = result.expect_err(&path);
                assert!(
                    errors
                        .iter()
                        .any(|e| e.field == path && e.code == "required"),
                    "{path}: {errors:?}"
                );
            } else {
                assert!(
                    result.is_ok(),
                    "{path} is optional in the schema: {result:?}"
                );
            }
        }
    }

    #[test]
    fn members_the_schema_does_not_name_are_rejected() {
        let c = components();
        let root = &c["OrderRequest"];
        // The schema forbids extra members everywhere...
        for name in [
            "OrderRequest",
            "CustomerIn",
            "AddressIn",
            "GiftRecipientIn",
            "ItemIn",
            "CardIn",
            "ConsentIn",
        ] {
            assert_eq!(c[name]["additionalProperties"], json!(false), "{name}");
        }
        // ...and so does the parser.
        let mut doc = sample(root, &c, true);
        doc["customer"]["nickname"] = json!("x");
        let errors = check(doc, Source::Json).unwrap_err();
        assert_eq!(errors[0].field, "customer.nickname");
        assert_eq!(errors[0].code, "unknown_field");
    }

    /// Every leaf of `tree` as an empty string.
    fn blanked(tree: &Value) -> Value {
        match tree {
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), blanked(v))).collect())
            }
            _ => json!(""),
        }
    }

    fn as_form(tree: &Value) -> Value {
        let mut fields = Vec::new();
        to_form(tree, "", &mut fields);
        let body: String = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    k,
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        crate::domain::form::parse(body.as_bytes()).unwrap()
    }

    /// An optional section sent with every member the schema names left
    /// blank is an empty section (a form sends its empty inputs), so the
    /// parser's list of each section's members agrees with the schema; a
    /// blank member the section does not have is not waved through with it,
    /// but reported as unknown.
    #[test]
    fn a_blank_optional_section_is_left_out_but_not_a_member_it_does_not_have() {
        let c = components();
        let required = sample(&c["OrderRequest"], &c, false);
        for (section, schema) in [
            ("shipping_address", "AddressIn"),
            ("gift_recipient", "GiftRecipientIn"),
        ] {
            let empty = blanked(&sample(&c[schema], &c, true));
            let mut doc = required.clone();
            doc[section] = empty.clone();
            check(doc.clone(), Source::Json).unwrap_or_else(|e| panic!("{section}: {e:?}"));
            check(as_form(&doc), Source::Form).unwrap_or_else(|e| panic!("{section}: {e:?}"));

            let mut strays = vec![format!("{section}.nickname")];
            let mut with_stray = empty.clone();
            with_stray["nickname"] = json!("");
            if section == "gift_recipient" {
                with_stray["address"]["line_one"] = json!(null);
                strays.push(format!("{section}.address.line_one"));
            }
            let mut doc = required.clone();
            doc[section] = with_stray;
            for (tree, source) in [(doc.clone(), Source::Json), (as_form(&doc), Source::Form)] {
                let errors = check(tree, source).unwrap_err();
                for stray in &strays {
                    assert!(
                        errors
                            .iter()
                            .any(|e| e.field == *stray && e.code == "unknown_field"),
                        "{stray}: {errors:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn form_schema_marks_nested_required_members() {
        let c = components();
        let form = form_schema(&c["OrderRequest"], &c);
        let required: Vec<&str> = form["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for name in [
            "customer.name",
            "items.0.sku",
            "card.number",
            "consent.policy_version",
        ] {
            assert!(required.contains(&name), "{name}");
        }
        for name in [
            "customer.company",
            "gift_recipient.name",
            "consent.special_offers",
        ] {
            assert!(!required.contains(&name), "{name}");
        }
        assert_eq!(form["properties"]["items.0.quantity"]["type"], "string");
    }
}
