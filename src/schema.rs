//! A small declarative schema language, shaped like Kong's, that validates admin input, coerces
//! form values, fills defaults and reports errors in Kong's nested `fields` shape.

use serde_json::{Map, Value};

/// A validation function for one value; returns Kong's error text.
pub type Check = fn(&Value) -> Result<(), String>;
/// A whole-record check; returns `@entity` errors.
pub type EntityCheck = fn(&Map<String, Value>) -> Vec<String>;
/// Produces a default value when the field is absent.
pub type DefaultFn = fn() -> Value;

/// The type of a field.
#[derive(Debug, Clone)]
pub enum FieldType {
    /// UTF-8 string.
    String,
    /// Integer.
    Integer,
    /// Any number.
    Number,
    /// true / false.
    Boolean,
    /// Ordered list of elements.
    Array(Box<FieldType>),
    /// List of unique elements.
    Set(Box<FieldType>),
    /// Map from string to list of strings (route `headers`).
    StringListMap,
    /// Map from string to string.
    StringMap,
    /// Nested record with its own schema.
    Record(&'static Schema),
    /// A record whose fields another schema checks (a plugin's `config`, validated against the
    /// schema of the plugin named beside it).
    AnyRecord,
    /// Foreign key `{"id": uuid}` to the named entity.
    Foreign(&'static str),
    /// UUID string.
    Uuid,
}

/// One field of a schema.
#[derive(Debug, Clone)]
pub struct Field {
    /// Field name.
    pub name: &'static str,
    /// Field type.
    pub ty: FieldType,
    /// Must be present and non-null after defaults.
    pub required: bool,
    /// Default when absent.
    pub default: Option<DefaultFn>,
    /// Allowed values (strings).
    pub one_of: &'static [&'static str],
    /// Inclusive integer range.
    pub between: Option<(i64, i64)>,
    /// Extra check on a non-null value (arrays: on each element).
    pub check: Option<Check>,
    /// Never returned on reads (e.g. the service `url` shorthand).
    pub write_only: bool,
    /// A regular expression (unanchored, whole value) whose matches `check` always accepts; `check`
    /// may accept more. The OpenAPI document shows it on input, so that clients and generated
    /// requests can form valid values; validation never uses it.
    pub pattern: Option<&'static str>,
}

impl Field {
    /// A field with no constraints.
    pub const fn new(name: &'static str, ty: FieldType) -> Self {
        Self {
            name,
            ty,
            required: false,
            default: None,
            one_of: &[],
            between: None,
            check: None,
            write_only: false,
            pattern: None,
        }
    }
    /// Marks the field required.
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    /// Sets the default.
    pub const fn default(mut self, f: DefaultFn) -> Self {
        self.default = Some(f);
        self
    }
    /// Restricts to a set of values.
    pub const fn one_of(mut self, v: &'static [&'static str]) -> Self {
        self.one_of = v;
        self
    }
    /// Restricts an integer range.
    pub const fn between(mut self, lo: i64, hi: i64) -> Self {
        self.between = Some((lo, hi));
        self
    }
    /// Adds a value check.
    pub const fn check(mut self, c: Check) -> Self {
        self.check = Some(c);
        self
    }
    /// Documents values the check accepts (see [`Field::pattern`]).
    pub const fn pattern(mut self, p: &'static str) -> Self {
        self.pattern = Some(p);
        self
    }
}

/// A number from `lo` to `hi` (fractions allowed), with Kong's message: the check of Kong's
/// `number` fields with a `between`, which [`Field::between`] (integers) does not cover.
///
/// # Errors
/// Kong's `value should be between …` message.
pub fn check_number_between(v: &Value, lo: f64, hi: f64) -> Result<(), String> {
    match v.as_f64() {
        Some(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(format!("value should be between {lo} and {hi}")),
    }
}

/// Kong's `typedefs.header_name`: a header name of letters, digits, `_` and `-`.
///
/// # Errors
/// Kong's message naming the value.
pub fn check_header_name(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(format!(
            "bad header name '{s}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
        ))
    }
}

/// A record schema: fields plus whole-record checks.
#[derive(Debug)]
pub struct Schema {
    /// Schema name (entity or plugin).
    pub name: &'static str,
    /// Fields in declaration order.
    pub fields: Vec<Field>,
    /// Entity-level checks (`@entity`).
    pub entity_checks: Vec<EntityCheck>,
}

impl Schema {
    /// Looks a field up.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// A [`Check`] for URLs the gateway calls itself (a plugin's introspection or log endpoint):
/// `http` or `https`, with a host.
///
/// # Errors
/// Kong-style text naming what is wrong.
pub fn check_http_url(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err("expected an http or https URL with a host".into()),
        Err(e) => Err(format!("invalid URL: {e}")),
    }
}

/// Validation errors in Kong's `fields` shape (nested objects, `@entity` arrays).
pub type FieldErrors = Map<String, Value>;

/// Whether input came from a form (all strings) so coercion applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coerce {
    /// JSON input: types must match.
    No,
    /// Form input: strings are converted to the field type where possible.
    Yes,
}

/// Validates `input` against `schema`: unknown fields, types, ranges, required fields; fills
/// defaults for absent fields. Returns the clean record or every error found.
///
/// # Errors
/// The nested field errors, ready for a schema-violation answer.
pub fn validate(
    schema: &Schema,
    input: &Map<String, Value>,
    coerce: Coerce,
) -> Result<Map<String, Value>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut out = Map::new();
    for (key, _) in input.iter() {
        if schema.field(key).is_none() {
            errors.insert(key.clone(), Value::String("unknown field".into()));
        }
    }
    for field in &schema.fields {
        let value = match input.get(field.name) {
            Some(v) => Some(v.clone()),
            None => field.default.map(|d| d()),
        };
        match value {
            None | Some(Value::Null) => {
                if field.required {
                    errors.insert(
                        field.name.into(),
                        Value::String("required field missing".into()),
                    );
                } else {
                    out.insert(field.name.into(), Value::Null);
                }
            }
            Some(v) => match check_value(field, &field.ty, v, coerce) {
                Ok(v) => {
                    out.insert(field.name.into(), v);
                }
                Err(e) => {
                    errors.insert(field.name.into(), e);
                }
            },
        }
    }
    if errors.is_empty() {
        let entity: Vec<Value> = schema
            .entity_checks
            .iter()
            .flat_map(|c| c(&out))
            .map(Value::String)
            .collect();
        if !entity.is_empty() {
            errors.insert("@entity".into(), Value::Array(entity));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn type_error(ty: &FieldType) -> Value {
    let text = match ty {
        FieldType::String | FieldType::Uuid => "expected a string",
        FieldType::Integer => "expected an integer",
        FieldType::Number => "expected a number",
        FieldType::Boolean => "expected a boolean",
        FieldType::Array(_) => "expected an array",
        FieldType::Set(_) => "expected a set",
        FieldType::StringListMap | FieldType::StringMap => "expected a map",
        FieldType::Record(_) | FieldType::AnyRecord | FieldType::Foreign(_) => "expected a record",
    };
    Value::String(text.into())
}

fn check_value(field: &Field, ty: &FieldType, v: Value, coerce: Coerce) -> Result<Value, Value> {
    let v = match (ty, v) {
        (FieldType::String, Value::String(s)) => Value::String(s),
        (FieldType::Uuid, Value::String(s)) => {
            if uuid::Uuid::parse_str(&s).is_err() {
                return Err(Value::String("expected a valid UUID".into()));
            }
            Value::String(s)
        }
        (FieldType::Integer, Value::Number(n)) if n.is_i64() => Value::Number(n),
        (FieldType::Integer, Value::Number(n))
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9e15) =>
        {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "checked integral and in range above"
            )]
            let i = n.as_f64().unwrap_or_default() as i64;
            Value::from(i)
        }
        (FieldType::Integer, Value::String(s)) if coerce == Coerce::Yes => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| type_error(ty))?,
        (FieldType::Number, Value::Number(n)) => Value::Number(n),
        (FieldType::Number, Value::String(s)) if coerce == Coerce::Yes => {
            let f = s.trim().parse::<f64>().map_err(|_| type_error(ty))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| type_error(ty))?
        }
        (FieldType::Boolean, Value::Bool(b)) => Value::Bool(b),
        (FieldType::Boolean, Value::String(s)) if coerce == Coerce::Yes => match s.as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(type_error(ty)),
        },
        (FieldType::Array(el) | FieldType::Set(el), v) => {
            let items = match v {
                Value::Array(a) => a,
                Value::String(s) if coerce == Coerce::Yes => vec![Value::String(s)],
                Value::Object(o) if o.is_empty() => Vec::new(),
                _ => return Err(type_error(ty)),
            };
            let mut clean = Vec::with_capacity(items.len());
            let mut errs = Vec::with_capacity(items.len());
            let mut any_err = false;
            for item in items {
                match check_value(
                    &Field {
                        one_of: field.one_of,
                        check: field.check,
                        between: field.between,
                        ..Field::new(field.name, (**el).clone())
                    },
                    el,
                    item,
                    coerce,
                ) {
                    Ok(c) => {
                        if matches!(ty, FieldType::Set(_)) && clean.contains(&c) {
                            continue;
                        }
                        clean.push(c);
                        errs.push(Value::Null);
                    }
                    Err(e) => {
                        any_err = true;
                        errs.push(e);
                    }
                }
            }
            if any_err {
                return Err(Value::Array(errs));
            }
            return Ok(Value::Array(clean));
        }
        (FieldType::StringListMap, Value::Object(o)) => {
            let mut clean = Map::new();
            for (k, v) in o {
                let list = match v {
                    Value::String(s) => vec![Value::String(s)],
                    Value::Array(a) if a.iter().all(Value::is_string) => a,
                    _ => return Err(Value::String("expected an array of strings".into())),
                };
                clean.insert(k, Value::Array(list));
            }
            Value::Object(clean)
        }
        (FieldType::StringMap, Value::Object(o)) => {
            if o.values().any(|v| !v.is_string()) {
                return Err(Value::String("expected a string".into()));
            }
            Value::Object(o)
        }
        (FieldType::Record(schema), Value::Object(o)) => {
            return validate(schema, &o, coerce)
                .map(Value::Object)
                .map_err(Value::Object);
        }
        (FieldType::AnyRecord, Value::Object(o)) => Value::Object(o),
        (FieldType::Foreign(_), Value::Object(o)) => {
            let id = o.get("id").and_then(Value::as_str).unwrap_or_default();
            if uuid::Uuid::parse_str(id).is_err() {
                let mut e = Map::new();
                e.insert("id".into(), Value::String("expected a valid UUID".into()));
                return Err(Value::Object(e));
            }
            let mut clean = Map::new();
            clean.insert("id".into(), Value::String(id.to_string()));
            Value::Object(clean)
        }
        (FieldType::Foreign(_), Value::String(s)) if uuid::Uuid::parse_str(&s).is_ok() => {
            let mut clean = Map::new();
            clean.insert("id".into(), Value::String(s));
            Value::Object(clean)
        }
        (ty, _) => return Err(type_error(ty)),
    };
    if !field.one_of.is_empty() {
        if let Some(s) = v.as_str() {
            if !field.one_of.contains(&s) {
                return Err(Value::String(format!(
                    "expected one of: {}",
                    field.one_of.join(", ")
                )));
            }
        }
    }
    // As f64: a JSON number such as 1e308 has no i64 form and must not slip past the range.
    if let (Some((lo, hi)), Some(n)) = (field.between, v.as_f64()) {
        #[expect(
            clippy::cast_precision_loss,
            reason = "bounds are small configured constants"
        )]
        let (lo_f, hi_f) = (lo as f64, hi as f64);
        if n < lo_f || n > hi_f {
            return Err(Value::String(format!(
                "value should be between {lo} and {hi}"
            )));
        }
    }
    if let Some(check) = field.check {
        check(&v).map_err(Value::String)?;
    }
    Ok(v)
}

/// Kong's summary line: `schema violation (f: e)` or `N schema violations (f1: e1; f2: e2)`.
pub fn violation_message(errors: &FieldErrors) -> String {
    let mut parts = Vec::new();
    if let Some(Value::Array(entity)) = errors.get("@entity") {
        for e in entity {
            if let Some(s) = e.as_str() {
                parts.push(s.to_string());
            }
        }
    }
    let mut flat = Vec::new();
    flatten("", errors, &mut flat);
    flat.sort();
    parts.extend(flat);
    if parts.len() == 1 {
        format!("schema violation ({})", parts[0])
    } else {
        format!("{} schema violations ({})", parts.len(), parts.join("; "))
    }
}

fn flatten(prefix: &str, errors: &Map<String, Value>, out: &mut Vec<String>) {
    for (k, v) in errors {
        if k == "@entity" && prefix.is_empty() {
            continue;
        }
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::String(s) => out.push(format!("{key}: {s}")),
            Value::Object(o) => flatten(&key, o, out),
            Value::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    match e {
                        Value::String(s) => out.push(format!("{key}.{}: {s}", i + 1)),
                        Value::Array(inner) => {
                            for s in inner.iter().filter_map(Value::as_str) {
                                out.push(format!("{key}: {s}"));
                            }
                        }
                        Value::Object(o) => flatten(&format!("{key}.{}", i + 1), o, out),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// Removes write-only fields before a record is returned.
pub fn strip_write_only(schema: &Schema, doc: &mut Map<String, Value>) {
    for f in schema.fields.iter().filter(|f| f.write_only) {
        doc.remove(f.name);
    }
}

/// Merges `patch` into `base` for PATCH: records merge field by field, everything else replaces.
pub fn merge_patch(schema: &Schema, base: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (k, v) in patch {
        match (schema.field(&k).map(|f| &f.ty), base.get_mut(&k), v) {
            (Some(FieldType::Record(inner)), Some(Value::Object(existing)), Value::Object(p)) => {
                merge_patch(inner, existing, p);
            }
            (Some(FieldType::AnyRecord), Some(Value::Object(existing)), Value::Object(p)) => {
                merge_objects(existing, p);
            }
            (_, _, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Merges JSON objects recursively (nested objects merge, everything else replaces), for records
/// whose schema is not known here.
fn merge_objects(base: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (k, v) in patch {
        match (base.get_mut(&k), v) {
            (Some(Value::Object(existing)), Value::Object(p)) => merge_objects(existing, p),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}
