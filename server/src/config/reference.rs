//! The configuration reference in docs/operations.md, generated from the
//! [`Config`] structs themselves: their JSON Schema (`schemars`) carries
//! every field, its type, its default (serialized from `Default`) and its
//! doc comment, so the document cannot miss or misstate a field.
//!
//! `framegate config reference --write docs/operations.md` rewrites the part
//! of the document between [`BEGIN`] and [`END`]; the `config_reference`
//! test fails when the committed text differs from what this module makes.

use serde_json::{Map, Value};

use super::Config;

/// Marks the start of the generated reference in docs/operations.md.
pub const BEGIN: &str = "<!-- config-reference:begin -->";
/// Marks its end.
pub const END: &str = "<!-- config-reference:end -->";

/// The command that regenerates the reference (said in errors and docs).
pub const REGENERATE: &str =
    "cargo run -p framegate -- config reference --write docs/operations.md";

/// The whole reference, as Markdown (without the markers).
pub fn markdown() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema is JSON");
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "<!-- Generated from the `Config` structs in server/src/config/ (their doc comments and `Default`s). Do not edit by hand: run `{REGENERATE}`. -->\n\n"
    ));
    let gen = Gen { defs: &defs };
    gen.table(&mut out, "", &schema, "");
    out
}

/// Replaces the text between the markers in `doc` with [`markdown`].
pub fn splice(doc: &str) -> Result<String, String> {
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        return Err(format!("the document has no {BEGIN} … {END} markers"));
    };
    if e < b {
        return Err(format!("{END} comes before {BEGIN}"));
    }
    Ok(format!(
        "{}{BEGIN}\n{}{END}{}",
        &doc[..b],
        markdown(),
        &doc[e + END.len()..]
    ))
}

/// The reference as it stands in `doc` (between the markers), if any.
pub fn extract(doc: &str) -> Option<&str> {
    let b = doc.find(BEGIN)? + BEGIN.len();
    let e = doc.find(END)?;
    doc.get(b..e).map(|s| s.strip_prefix('\n').unwrap_or(s))
}

struct Gen<'a> {
    defs: &'a Map<String, Value>,
}

/// How a field is laid out in TOML.
enum Shape<'a> {
    /// A `[table]` (a struct).
    Table(&'a Value),
    /// `[[array]]` of tables.
    ArrayOfTables(&'a Value),
    /// `[map.NAME]`: named tables.
    MapOfTables(&'a Value),
    /// A plain value in the table's key list.
    Value,
}

impl<'a> Gen<'a> {
    /// Follows `$ref` (and a lone `allOf`/`anyOf` with `null`) to the schema
    /// of the value itself.
    fn resolve(&self, s: &'a Value) -> &'a Value {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            if let Some(d) = self.defs.get(name) {
                return self.resolve(d);
            }
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(list) = s.get(key).and_then(Value::as_array) {
                let non_null: Vec<&Value> = list
                    .iter()
                    .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
                    .collect();
                if non_null.len() == 1 {
                    return self.resolve(non_null[0]);
                }
            }
        }
        s
    }

    fn is_struct(&self, s: &Value) -> bool {
        s.get("properties").is_some()
    }

    fn shape(&self, field: &'a Value) -> Shape<'a> {
        let s = self.resolve(field);
        if self.is_struct(s) {
            return Shape::Table(s);
        }
        if let Some(items) = s.get("items") {
            let item = self.resolve(items);
            if self.is_struct(item) {
                return Shape::ArrayOfTables(item);
            }
        }
        if let Some(v) = s.get("additionalProperties") {
            let value = self.resolve(v);
            if self.is_struct(value) {
                return Shape::MapOfTables(value);
            }
        }
        Shape::Value
    }

    fn type_name(&self, field: &Value) -> String {
        let optional = is_optional(field);
        let s = self.resolve(field);
        let mut t = if let Some(values) = enum_values(s) {
            values.join(" \\| ")
        } else {
            match s.get("type") {
                Some(Value::String(t)) => self.plain_type(t, s),
                Some(Value::Array(ts)) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| *t != "null")
                    .map(|t| self.plain_type(t, s))
                    .collect::<Vec<_>>()
                    .join(" or "),
                _ => "value".into(),
            }
        };
        if optional
            || matches!(s.get("type"), Some(Value::Array(ts)) if ts.iter().any(|t| t == "null"))
        {
            t.push_str(" (optional)");
        }
        t
    }

    fn plain_type(&self, t: &str, s: &Value) -> String {
        match t {
            "array" => match s.get("items") {
                Some(i) => format!("list of {}", self.type_name(i)),
                None => "list".into(),
            },
            "object" => match s.get("additionalProperties") {
                Some(v) if v.is_object() => format!("table of {}", self.type_name(v)),
                _ => "table".into(),
            },
            other => other.into(),
        }
    }

    /// One TOML table: its doc, its keys, then its sub-tables.
    fn table(&self, out: &mut String, path: &str, schema: &Value, doc: &str) {
        let s = self.resolve(schema);
        let Some(props) = s.get("properties").and_then(Value::as_object) else {
            return;
        };
        let defaults = s.get("default");
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // `[http]`, `[[auth.keys]]` (array paths come bracketed),
        // `[plans.NAME]`.
        let heading = if path.is_empty() {
            "Top level".to_string()
        } else {
            format!("`[{path}]`")
        };
        out.push_str(&format!("#### {heading}\n\n"));
        let doc = if doc.is_empty() {
            description(s)
        } else {
            doc.to_string()
        };
        if !doc.is_empty() {
            out.push_str(&format!("{doc}\n\n"));
        }
        let mut rows = Vec::new();
        let mut subs = Vec::new();
        for (key, field) in props {
            let field_doc = description(field);
            let field_doc = if field_doc.is_empty() {
                description(self.resolve(field))
            } else {
                field_doc
            };
            let default = field
                .get("default")
                .or_else(|| defaults.and_then(|d| d.get(key)));
            let default = match default {
                None if required.contains(&key.as_str()) => Some(&REQUIRED),
                d => d,
            };
            match self.shape(field) {
                Shape::Table(t) => subs.push((join(path, key, false), t, field_doc)),
                Shape::ArrayOfTables(t) => {
                    rows.push(row(key, "list of tables", default, &field_doc));
                    subs.push((format!("[{}]", join(path, key, false)), t, String::new()));
                }
                Shape::MapOfTables(t) => {
                    rows.push(row(key, "table of tables", default, &field_doc));
                    subs.push((join(path, key, true), t, String::new()));
                }
                Shape::Value => rows.push(row(key, &self.type_name(field), default, &field_doc)),
            }
        }
        if !rows.is_empty() {
            out.push_str("| key | type | default | description |\n| --- | --- | --- | --- |\n");
            for r in rows {
                out.push_str(&r);
            }
            out.push('\n');
        }
        for (p, t, d) in subs {
            self.table(out, &p, t, &d);
        }
    }
}

fn join(path: &str, key: &str, map: bool) -> String {
    let base = if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    };
    if map {
        format!("{base}.NAME")
    } else {
        base
    }
}

fn is_optional(s: &Value) -> bool {
    ["anyOf", "oneOf"].iter().any(|k| {
        s.get(*k).and_then(Value::as_array).is_some_and(|l| {
            l.iter()
                .any(|v| v.get("type").and_then(Value::as_str) == Some("null"))
        })
    })
}

fn enum_values(s: &Value) -> Option<Vec<String>> {
    if let Some(v) = s.get("enum").and_then(Value::as_array) {
        return Some(v.iter().map(|x| format!("`{x}`")).collect());
    }
    let list = s.get("oneOf").and_then(Value::as_array)?;
    let mut out = Vec::new();
    for v in list {
        if let Some(c) = v.get("const") {
            out.push(format!("`{c}`"));
        } else if let Some(e) = v.get("enum").and_then(Value::as_array) {
            out.extend(e.iter().map(|x| format!("`{x}`")));
        } else {
            return None;
        }
    }
    Some(out)
}

/// A doc comment as one Markdown table cell.
fn description(s: &Value) -> String {
    s.get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Stands for "no default: must be given" among the defaults.
static REQUIRED: Value = Value::Bool(false);

fn row(key: &str, ty: &str, default: Option<&Value>, doc: &str) -> String {
    let default = match default {
        Some(v) if std::ptr::eq(v, &REQUIRED) => "required".to_string(),
        None | Some(Value::Null) => "—".to_string(),
        Some(v) => format!("`{}`", toml_literal(v)),
    };
    format!("| `{key}` | {ty} | {default} | {doc} |\n")
}

/// A JSON default as it would be written in framegate.toml.
fn toml_literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{k} = {}", toml_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the serialized default configuration has a row, under
    /// its table's heading (belt and braces for the schema walk).
    #[test]
    fn every_default_field_is_in_the_reference() {
        let md = markdown();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        fn walk(md: &str, path: &str, v: &toml::Value) {
            let toml::Value::Table(t) = v else { return };
            let heading = if path.is_empty() {
                "#### Top level\n".to_string()
            } else {
                format!("#### `[{path}]`\n")
            };
            let at = md
                .find(&heading)
                .unwrap_or_else(|| panic!("no section {heading:?}"));
            let section = &md[at + heading.len()..];
            let section = &section[..section.find("\n#### ").unwrap_or(section.len())];
            for (k, v) in t {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match v {
                    toml::Value::Table(t) if !t.is_empty() => walk(md, &sub, v),
                    // An empty table is a map (`budgets`, `plans`: a key
                    // row) or a section of optional fields (`[tls]`).
                    toml::Value::Table(_) => assert!(
                        section.contains(&format!("| `{k}` |"))
                            || md.contains(&format!("#### `[{sub}]`\n")),
                        "{sub} is missing from the reference"
                    ),
                    _ => assert!(
                        section.contains(&format!("| `{k}` |")),
                        "{sub} is missing from the reference"
                    ),
                }
            }
        }
        walk(&md, "", &defaults);
        // Doc comments and defaults come through.
        assert!(md.contains(
            "| `shutdown_timeout_secs` | integer | `20` | After SIGTERM/SIGINT, seconds"
        ));
    }

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = format!("before\n{BEGIN}\nold\n{END}\nafter\n");
        let new = splice(&doc).unwrap();
        assert!(new.starts_with("before\n"));
        assert!(new.ends_with(&format!("{END}\nafter\n")));
        assert_eq!(extract(&new).unwrap(), markdown());
        assert!(splice("no markers").is_err());
    }
}
