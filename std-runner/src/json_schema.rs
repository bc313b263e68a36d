//! JSON Schema to GBNF: the grammar of the JSON texts a schema accepts, for
//! OpenAI's `response_format: {"type": "json_schema", ...}` and `ember run
//! --json-schema`.
//!
//! Supported: `type` (one or a list), `properties` with `required` (in the
//! schema's order; optional properties may be left out), `additionalProperties:
//! false`, `items`, `prefixItems`, `minItems`/`maxItems`, `minLength`/`maxLength`,
//! `enum`, `const`, `anyOf`/`oneOf`, `allOf` of one schema, `$ref` into
//! `$defs`/`definitions` (recursion included), `nullable`, and the string
//! formats `date`, `time`, `date-time` and `uuid`. Annotations (`title`,
//! `description`, ...) are ignored. Anything else is refused with the keyword
//! named ([`SchemaError`]), never silently dropped: output that ignored a
//! constraint would not validate.
//!
//! Like the object grammar, every value ends with optional whitespace (at
//! most one newline and 20 spaces or tabs).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// A schema the converter cannot express: the keyword and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub keyword: String,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JSON schema keyword '{}': {}",
            self.keyword, self.message
        )
    }
}

impl std::error::Error for SchemaError {}

fn unsupported(keyword: &str, message: &str) -> SchemaError {
    SchemaError {
        keyword: keyword.to_string(),
        message: message.to_string(),
    }
}

/// Keywords that describe and do not constrain.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
    "strict",
];

const PRIMITIVES: &str = r#"ws ::= | " " | "\n" [ \t]{0,20}
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" hex-bmp | "u" [dD] [89abAB] hex hex "\\u" [dD] [c-fC-F] hex hex )
hex-bmp ::= [0-9a-cA-Ce-fE-F] hex hex hex | [dD] [0-7] hex hex
hex ::= [0-9a-fA-F]
string ::= "\"" char* "\"" ws
integer ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ws
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,4} )? ws
boolean ::= ( "true" | "false" ) ws
null ::= "null" ws
value ::= object | array | string | number | boolean | null
object ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}" ws
array ::= "[" ws ( value ( "," ws value )* )? "]" ws
"#;

/// The GBNF grammar (start rule `root`) of the JSON texts `schema` accepts.
pub fn to_gbnf(schema: &Value) -> Result<String, SchemaError> {
    let mut c = Conv {
        root: schema,
        rules: Vec::new(),
        refs: HashMap::new(),
        taken: FIXED.iter().map(|s| s.to_string()).collect(),
        dated: false,
    };
    let root = c.visit(schema, "root", 0)?;
    let mut out = format!("root ::= {root}\n");
    for (name, body) in &c.rules {
        let _ = writeln!(out, "{name} ::= {body}");
    }
    out.push_str(PRIMITIVES);
    Ok(out)
}

struct Conv<'a> {
    root: &'a Value,
    rules: Vec<(String, String)>,
    /// `$ref` target to its rule name.
    refs: HashMap<String, String>,
    /// Rule names taken (the fixed ones from the start).
    taken: HashSet<String>,
    /// Whether the `date` and `time` rules are written.
    dated: bool,
}

/// Names of the fixed rules: no schema-made rule takes them.
const FIXED: &[&str] = &[
    "root", "ws", "char", "hex", "hex-bmp", "string", "integer", "number", "boolean", "null",
    "value", "object", "array", "date", "time",
];

/// Nesting past this is refused (a schema is a tree but for `$ref`s).
const MAX_DEPTH: usize = 64;

impl<'a> Conv<'a> {
    /// A new rule name from a hint (letters, digits and dashes), unlike
    /// every name taken.
    fn name(&mut self, hint: &str) -> String {
        let mut stem: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        if stem.is_empty() {
            stem.push('s');
        }
        let mut name = stem.clone();
        let mut n = 1;
        while self.taken.contains(&name) {
            n += 1;
            name = format!("{stem}-{n}");
        }
        self.taken.insert(name.clone());
        name
    }

    fn rule(&mut self, hint: &str, body: String) -> String {
        let name = self.name(hint);
        self.rules.push((name.clone(), body));
        name
    }

    /// A GBNF expression for `s`.
    fn visit(&mut self, s: &'a Value, hint: &str, depth: usize) -> Result<String, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(unsupported("$ref", "nesting deeper than 64 schemas"));
        }
        let obj = match s {
            Value::Bool(true) => return Ok("value".into()),
            Value::Bool(false) => {
                return Err(unsupported("false", "a schema that accepts nothing"))
            }
            Value::Object(o) => o,
            _ => {
                return Err(unsupported(
                    "schema",
                    "a schema must be an object or a boolean",
                ))
            }
        };
        let nullable = obj
            .get("nullable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let expr = self.visit_object(obj, hint, depth)?;
        Ok(if nullable {
            format!("( {expr} | null )")
        } else {
            expr
        })
    }

    fn visit_object(
        &mut self,
        o: &'a Map<String, Value>,
        hint: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        for k in o.keys() {
            if !ANNOTATIONS.contains(&k.as_str()) && !KNOWN.contains(&k.as_str()) {
                return Err(unsupported(k, "not supported in structured output"));
            }
        }
        // A combinator stands alone: constraints beside it would be dropped
        // (`type` beside `enum` or `const` is checked against each value).
        for key in ["$ref", "const", "enum", "anyOf", "oneOf", "allOf"] {
            if o.contains_key(key) {
                let typed = matches!(key, "const" | "enum");
                let beside = o.keys().find(|k| {
                    KNOWN.contains(&k.as_str())
                        && !matches!(k.as_str(), "nullable")
                        && k.as_str() != key
                        && !(typed && k.as_str() == "type")
                });
                if let Some(other) = beside {
                    return Err(unsupported(other, &format!("not supported beside '{key}'")));
                }
            }
        }
        if let Some(r) = o.get("$ref") {
            return self.reference(r, depth);
        }
        let fits = |v: &Value| match o.get("type") {
            None => true,
            Some(Value::String(t)) => of_type(v, t),
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).any(|t| of_type(v, t)),
            Some(_) => false,
        };
        if let Some(c) = o.get("const") {
            if !fits(c) {
                return Err(unsupported(
                    "const",
                    "the value is not of the schema's type",
                ));
            }
            return Ok(literal(c));
        }

        if let Some(e) = o.get("enum") {
            let Value::Array(vals) = e else {
                return Err(unsupported("enum", "must be an array"));
            };
            let alts: Vec<String> = vals.iter().filter(|v| fits(v)).map(literal).collect();
            if alts.is_empty() {
                return Err(unsupported(
                    "enum",
                    "no value of the schema's type: it accepts nothing",
                ));
            }
            return Ok(format!("( {} )", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(v) = o.get(key) {
                let Value::Array(subs) = v else {
                    return Err(unsupported(key, "must be an array"));
                };
                if subs.is_empty() {
                    return Err(unsupported(key, "must not be empty"));
                }
                if key == "oneOf" && !disjoint_types(subs) {
                    return Err(unsupported(
                        "oneOf",
                        "only branches of different types are supported (a value matching two would be invalid); use anyOf",
                    ));
                }
                let mut alts = Vec::new();
                for (i, sub) in subs.iter().enumerate() {
                    alts.push(self.visit(sub, &format!("{hint}-{i}"), depth + 1)?);
                }
                return Ok(format!("( {} )", alts.join(" | ")));
            }
        }
        if let Some(v) = o.get("allOf") {
            return match v {
                Value::Array(subs) if subs.len() == 1 => self.visit(&subs[0], hint, depth + 1),
                _ => Err(unsupported(
                    "allOf",
                    "only an allOf of one schema is supported",
                )),
            };
        }
        let types: Vec<&str> = match o.get("type") {
            None => infer_type(o),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(unsupported(
                    "type",
                    "must be a string or an array of strings",
                ))
            }
        };
        if types.is_empty() {
            return Ok("value".into());
        }
        let mut alts = Vec::new();
        for t in types {
            alts.push(match t {
                "object" => self.object(o, hint, depth)?,
                "array" => self.array(o, hint, depth)?,
                "string" => self.string(o, hint)?,
                "integer" => "integer".into(),
                "number" => "number".into(),
                "boolean" => "boolean".into(),
                "null" => "null".into(),
                other => return Err(unsupported("type", &format!("unknown type '{other}'"))),
            });
        }
        Ok(if alts.len() == 1 {
            alts.remove(0)
        } else {
            format!("( {} )", alts.join(" | "))
        })
    }

    fn reference(&mut self, r: &Value, depth: usize) -> Result<String, SchemaError> {
        let Some(path) = r.as_str() else {
            return Err(unsupported("$ref", "must be a string"));
        };
        if let Some(name) = self.refs.get(path) {
            return Ok(name.clone());
        }
        let target = path
            .strip_prefix('#')
            .and_then(|p| self.root.pointer(p))
            .ok_or_else(|| {
                unsupported("$ref", &format!("'{path}' does not point into this schema"))
            })?;
        let hint = path.rsplit('/').next().unwrap_or("ref").to_string();
        // Name the rule before visiting it, so a recursive schema refers to it.
        let name = self.name(&hint);
        self.refs.insert(path.to_string(), name.clone());
        let body = self.visit(target, &hint, depth + 1)?;
        self.rules.push((name.clone(), body));
        Ok(name)
    }

    fn object(
        &mut self,
        o: &'a Map<String, Value>,
        hint: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        match o.get("additionalProperties") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true))
                if !o.contains_key("properties") && !o.contains_key("required") =>
            {
                return Ok("object".into());
            }
            Some(_) => {
                return Err(unsupported(
                    "additionalProperties",
                    "only false, or true with no properties, is supported",
                ))
            }
        }
        let props = match o.get("properties") {
            None if o.get("additionalProperties") == Some(&Value::Bool(false)) => {
                return Ok(r#""{" ws "}" ws"#.into())
            }
            None if o
                .get("required")
                .and_then(Value::as_array)
                .is_some_and(|r| !r.is_empty()) =>
            {
                return Err(unsupported(
                    "required",
                    "names properties that are not given",
                ));
            }
            None => return Ok("object".into()),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(unsupported("properties", "must be an object")),
        };
        let required: Vec<&str> = match o.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(unsupported("required", "must be an array of names")),
        };
        if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
            return Err(unsupported(
                "required",
                &format!("'{missing}' is required but not among the properties"),
            ));
        }
        let mut kvs = Vec::new();
        for (key, sub) in props {
            let value = self.visit(sub, &format!("{hint}-{key}"), depth + 1)?;
            let k = literal(&Value::String(key.clone()));
            kvs.push((
                format!(r#"{k} ":" ws {value}"#),
                required.contains(&key.as_str()),
            ));
        }
        // rest(i): properties i.. after one was written (each with a comma);
        // first(i): properties i.. before any was.
        let n = kvs.len();
        let mut rest = vec![String::new(); n + 1];
        for i in (0..n).rev() {
            let (kv, req) = &kvs[i];
            let after = rest[i + 1].clone();
            let body = if *req {
                format!(r#""," ws {kv} {after}"#)
            } else {
                format!(r#"( "," ws {kv} )? {after}"#)
            };
            rest[i] = self.rule(&format!("{hint}-rest"), body);
        }
        let mut first = String::new();
        for i in (0..n).rev() {
            let (kv, req) = &kvs[i];
            let body = if *req {
                format!("{kv} {}", rest[i + 1])
            } else if first.is_empty() {
                format!("( {kv} {} )?", rest[i + 1])
            } else {
                format!("{kv} {} | {first}", rest[i + 1])
            };
            first = self.rule(&format!("{hint}-first"), body);
        }
        Ok(format!(r#""{{" ws {first} "}}" ws"#))
    }

    fn array(
        &mut self,
        o: &'a Map<String, Value>,
        hint: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        if o.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                "uniqueItems",
                "not supported in structured output",
            ));
        }
        let (min, max) = (count(o, "minItems")?.unwrap_or(0), count(o, "maxItems")?);
        if max.is_some_and(|m| m < min) {
            return Err(unsupported("maxItems", "is below minItems"));
        }
        if let Some(Value::Array(prefix)) = o.get("prefixItems") {
            if let Some(k) = ["minItems", "maxItems"]
                .into_iter()
                .find(|k| o.contains_key(*k))
            {
                return Err(unsupported(k, "not supported beside prefixItems"));
            }
            if !matches!(o.get("items"), None | Some(Value::Bool(false))) {
                return Err(unsupported(
                    "items",
                    "items beside prefixItems must be false or absent",
                ));
            }
            let mut parts = Vec::new();
            for (i, sub) in prefix.iter().enumerate() {
                parts.push(self.visit(sub, &format!("{hint}-{i}"), depth + 1)?);
            }
            let body = parts.join(r#" "," ws "#);
            return Ok(format!(r#""[" ws {body} "]" ws"#));
        }
        let item = match o.get("items") {
            None => "value".to_string(),
            Some(sub) => self.visit(sub, &format!("{hint}-item"), depth + 1)?,
        };
        if max == Some(0) {
            return Ok(r#""[" ws "]" ws"#.into());
        }
        let more = |lo: u32| match max {
            None => format!("{{{lo},}}"),
            Some(m) => format!("{{{lo},{}}}", m - 1),
        };
        let body = if min == 0 {
            format!(r#"( {item} ( "," ws {item} ){} )?"#, more(0))
        } else {
            format!(r#"{item} ( "," ws {item} ){}"#, more(min - 1))
        };
        let name = self.rule(&format!("{hint}-items"), body);
        Ok(format!(r#""[" ws {name} "]" ws"#))
    }

    fn string(&mut self, o: &'a Map<String, Value>, hint: &str) -> Result<String, SchemaError> {
        if o.contains_key("pattern") {
            return Err(unsupported(
                "pattern",
                "regular expressions are not supported in structured output",
            ));
        }
        if let Some(f) = o.get("format") {
            if let Some(k) = ["minLength", "maxLength"]
                .into_iter()
                .find(|k| o.contains_key(*k))
            {
                return Err(unsupported(k, "not supported beside format"));
            }
            let body = match f.as_str() {
                Some("date") => r#""\"" date "\"" ws"#,
                Some("time") => r#""\"" time "\"" ws"#,
                Some("date-time") => r#""\"" date "T" time "\"" ws"#,
                Some("uuid") => {
                    r#""\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"" ws"#
                }
                _ => {
                    return Err(unsupported(
                        "format",
                        "only date, time, date-time and uuid are supported",
                    ))
                }
            };
            if !self.dated {
                self.dated = true;
                self.rules.push((
                    "date".into(),
                    r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )"#.into(),
                ));
                self.rules.push((
                    "time".into(),
                    r#"( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,9} )? ( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#.into(),
                ));
            }
            return Ok(body.to_string());
        }
        let (min, max) = (count(o, "minLength")?, count(o, "maxLength")?);
        if min.is_none() && max.is_none() {
            return Ok("string".into());
        }
        let lo = min.unwrap_or(0);
        let reps = match max {
            Some(m) if m < lo => return Err(unsupported("maxLength", "is below minLength")),
            Some(m) => format!("{{{lo},{m}}}"),
            None => format!("{{{lo},}}"),
        };
        Ok(self.rule(
            &format!("{hint}-string"),
            format!(r#""\"" char{reps} "\"" ws"#),
        ))
    }
}

/// A count keyword (`minItems`, `maxLength`, ...), within a repetition's cap.
fn count(o: &Map<String, Value>, k: &str) -> Result<Option<u32>, SchemaError> {
    match o.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= ember_core::grammar::MAX_REPEAT as u64)
            .map(|n| Some(n as u32))
            .ok_or_else(|| unsupported(k, "must be a whole number up to 4094")),
    }
}

/// Keywords the converter reads.
const KNOWN: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "nullable",
];

/// The types a schema with no `type` implies from its keywords.
fn infer_type(o: &Map<String, Value>) -> Vec<&'static str> {
    let any = |keys: &[&str]| keys.iter().any(|k| o.contains_key(*k));
    if any(&["properties", "additionalProperties", "required"]) {
        vec!["object"]
    } else if any(&[
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
    ]) {
        vec!["array"]
    } else if any(&["minLength", "maxLength", "format", "pattern"]) {
        vec!["string"]
    } else {
        Vec::new()
    }
}

/// Whether `v` is of JSON schema type `t`.
fn of_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Whether each branch names one type and no value can have two of them.
fn disjoint_types(subs: &[Value]) -> bool {
    let number = |t: &str| t == "number" || t == "integer";
    let mut seen: Vec<&str> = Vec::new();
    for s in subs {
        let Some(t) = s.get("type").and_then(Value::as_str) else {
            return false;
        };
        if seen.iter().any(|&u| u == t || (number(u) && number(t))) {
            return false;
        }
        seen.push(t);
    }
    true
}

/// A GBNF literal for the JSON text of `v`, then whitespace.
fn literal(v: &Value) -> String {
    let json = v.to_string();
    let mut s = String::from("\"");
    for c in json.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\x{:02X}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push_str("\" ws");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::grammar::GrammarBuf;
    use serde_json::json;

    #[test]
    fn schemas_become_grammars_that_parse() {
        let schemas = [
            json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name"]}),
            json!({"type": "array", "items": {"enum": ["a", "b", 3, null]}, "minItems": 1, "maxItems": 3}),
            json!({"$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"}),
            json!({"anyOf": [{"type": "string", "maxLength": 5}, {"type": ["number", "null"]}]}),
            json!({"type": "string", "format": "date-time"}),
            json!({"type": "array", "prefixItems": [{"type": "boolean"}, {"const": "x\"y"}]}),
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
            json!(true),
        ];
        for s in schemas {
            let g = to_gbnf(&s).unwrap();
            GrammarBuf::parse(&g).unwrap_or_else(|e| panic!("{s}: {e:?}\n{g}"));
        }
    }

    /// Whether the schema's grammar takes `text` whole.
    fn accepts(schema: &Value, text: &str) -> bool {
        use ember_core::grammar::{Matcher, VocabBuf};
        let g = GrammarBuf::parse(&to_gbnf(schema).unwrap()).unwrap();
        let singles: Vec<[u8; 1]> = (0..=255u8).map(|b| [b]).collect();
        let pieces: Vec<&[u8]> = singles.iter().map(|b| &b[..]).collect();
        let v = VocabBuf::from_pieces(&pieces, &[]).unwrap();
        let mut m = Matcher::alloc(&g.grammar()).unwrap();
        for &b in text.as_bytes() {
            if m.accept(&v.vocab(), b as u32).is_err() {
                return false;
            }
        }
        m.can_end()
    }

    #[test]
    fn the_grammar_takes_what_the_schema_takes() {
        let person = json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 5},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", 1]}, "maxItems": 2}},
            "required": ["age"]});
        for ok in [
            r#"{"age": 3}"#,
            r#"{"name": "Bo\"b", "age": -12}"#,
            r#"{"name":"","age":0,"tags":["a",1]}"#,
            r#"{"age": 7, "tags": []}"#,
            "{\n  \"name\": \"\u{e9}t\u{e9}\",\n  \"age\": 1\n}",
        ] {
            assert!(accepts(&person, ok), "{ok}");
        }
        for bad in [
            r#"{}"#,
            r#"{"name": "Bob"}"#,
            r#"{"name": "toolong", "age": 1}"#,
            r#"{"age": 1.5}"#,
            r#"{"age": 1, "tags": ["a", 1, 1]}"#,
            r#"{"age": 1, "tags": ["b"]}"#,
            r#"{"age": 1, "extra": 2}"#,
            r#"{"age": 1, "name": "x"}"#,
        ] {
            assert!(!accepts(&person, bad), "{bad}");
        }
        // Recursion through $ref, five levels deep.
        let tree = json!({"$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            "required": ["v"]}}, "$ref": "#/$defs/node"});
        let deep = r#"{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3, "kids": [{"v": 4, "kids": [{"v": 5}]}]}]}, {"v": 6}]}"#;
        assert!(accepts(&tree, deep));
        assert!(!accepts(&tree, r#"{"v": 1, "kids": [{"kids": []}]}"#));
        let when = json!({"type": "string", "format": "date-time"});
        assert!(accepts(&when, r#""2026-12-07T18:05:00Z""#));
        assert!(!accepts(&when, r#""2026-13-07T18:05:00Z""#));
    }

    #[test]
    fn constraints_are_kept_or_refused_never_dropped() {
        let typed_enum = json!({"type": "string", "enum": ["a", 1]});
        assert!(accepts(&typed_enum, r#""a""#) && !accepts(&typed_enum, "1"));
        let two = json!({"minItems": 2});
        assert!(accepts(&two, "[1, 2]") && !accepts(&two, "[]"));
        let either = json!({"oneOf": [{"type": "string"}, {"type": "null"}]});
        assert!(accepts(&either, "null") && accepts(&either, r#""x""#));
        // Names the schema also uses for its own definitions.
        let defs = json!({"$defs": {"root": {"type": "object", "properties": {"date": {"$ref": "#/$defs/date"}}},
                                    "date": {"type": "string", "format": "date"}},
                          "$ref": "#/$defs/root"});
        assert!(accepts(&defs, r#"{"date": "2026-12-07"}"#));
        for (s, kw) in [
            (json!({"required": ["a"]}), "required"),
            (json!({"uniqueItems": true}), "uniqueItems"),
            (json!({"pattern": "^a$"}), "pattern"),
            (
                json!({"type": "object", "properties": {"a": {}}, "anyOf": [{"required": ["a"]}]}),
                "type",
            ),
            (
                json!({"$ref": "#/$defs/x", "type": "string", "$defs": {"x": {}}}),
                "type",
            ),
            (
                json!({"oneOf": [{"type": "number"}, {"type": "integer"}]}),
                "oneOf",
            ),
            (
                json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                "additionalProperties",
            ),
            (
                json!({"type": "array", "minItems": 1, "maxItems": 0}),
                "maxItems",
            ),
            (
                json!({"type": "array", "prefixItems": [{}], "maxItems": 2}),
                "maxItems",
            ),
            (
                json!({"type": "string", "format": "date", "maxLength": 5}),
                "maxLength",
            ),
            (json!({"type": "integer", "const": "x"}), "const"),
        ] {
            assert_eq!(to_gbnf(&s).unwrap_err().keyword, kw, "{s}");
        }
    }

    #[test]
    fn unsupported_keywords_are_named() {
        for (s, kw) in [
            (json!({"type": "string", "pattern": "^a$"}), "pattern"),
            (json!({"type": "integer", "minimum": 3}), "minimum"),
            (
                json!({"type": "object", "properties": {"a": {}}, "additionalProperties": true}),
                "additionalProperties",
            ),
            (json!({"type": "string", "format": "email"}), "format"),
            (json!({"$ref": "#/$defs/missing"}), "$ref"),
            (json!({"type": "array", "uniqueItems": true}), "uniqueItems"),
            (
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}),
                "required",
            ),
            (json!({"type": "string", "maxLength": 5000}), "maxLength"),
        ] {
            assert_eq!(to_gbnf(&s).unwrap_err().keyword, kw, "{s}");
        }
    }
}
