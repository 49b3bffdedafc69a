//! Typed access to JSON rows and plugin parameters.

use serde_json::{Map, Value};

/// One input row (a JSON object) with typed, error-reporting getters. Errors are
/// human-readable strings meant for `Output::invalid`.
#[derive(Debug)]
pub struct Row {
    obj: Map<String, Value>,
}

impl Row {
    /// Parse one row's JSON text; fails unless it is a JSON object.
    pub fn parse(text: &str) -> Result<Row, String> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(obj)) => Ok(Row { obj }),
            Ok(other) => Err(format!("row is not a JSON object but {}", kind(&other))),
            Err(e) => Err(format!("row is not valid JSON: {e}")),
        }
    }

    /// The value at a dotted path (`choices.text`), if present and not null.
    pub fn get(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut cur = self.obj.get(parts.next()?)?;
        for p in parts {
            cur = cur.get(p)?;
        }
        (!cur.is_null()).then_some(cur)
    }

    /// A required string field.
    pub fn str(&self, path: &str) -> Result<&str, String> {
        match self.get(path) {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(format!("field `{path}` is {} , expected a string", kind(v))),
            None => Err(format!("missing field `{path}`")),
        }
    }

    /// An optional string field (missing or null → `None`).
    pub fn opt_str(&self, path: &str) -> Result<Option<&str>, String> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!("field `{path}` is {}, expected a string", kind(v))),
        }
    }

    /// A required list of strings.
    pub fn str_list(&self, path: &str) -> Result<Vec<&str>, String> {
        match self.get(path) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or_else(|| format!("field `{path}` holds {}, expected strings", kind(v))))
                .collect(),
            Some(v) => Err(format!("field `{path}` is {}, expected a list of strings", kind(v))),
            None => Err(format!("missing field `{path}`")),
        }
    }

    /// A required integer field (JSON number, or a string holding an integer).
    pub fn int(&self, path: &str) -> Result<i64, String> {
        match self.get(path) {
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| format!("field `{path}` is not an integer")),
            Some(Value::String(s)) => s.trim().parse().map_err(|_| format!("field `{path}` is not an integer: {s:?}")),
            Some(v) => Err(format!("field `{path}` is {}, expected an integer", kind(v))),
            None => Err(format!("missing field `{path}`")),
        }
    }

    /// A required array field.
    pub fn array(&self, path: &str) -> Result<&Vec<Value>, String> {
        match self.get(path) {
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(format!("field `{path}` is {}, expected a list", kind(v))),
            None => Err(format!("missing field `{path}`")),
        }
    }

    /// The underlying JSON object.
    pub fn object(&self) -> &Map<String, Value> {
        &self.obj
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Plugin parameters after the host's values were merged over the declared defaults.
#[derive(Debug, Default, Clone)]
pub struct Params {
    values: Map<String, Value>,
}

impl Params {
    /// Build from (name, JSON text) pairs, over `defaults` (name, JSON text). Unknown
    /// names and malformed JSON are errors naming the parameter.
    pub fn from_pairs(defaults: &[(String, String)], given: &[(String, String)]) -> Result<Params, String> {
        let mut values = Map::new();
        for (k, v) in defaults {
            let parsed = serde_json::from_str(v).map_err(|e| format!("default of `{k}` is not JSON: {e}"))?;
            values.insert(k.clone(), parsed);
        }
        for (k, v) in given {
            if !values.contains_key(k) {
                let known: Vec<&str> = defaults.iter().map(|(k, _)| k.as_str()).collect();
                return Err(format!("unknown parameter `{k}` (known: {})", known.join(", ")));
            }
            let parsed = serde_json::from_str(v).map_err(|e| format!("parameter `{k}` is not JSON: {e}"))?;
            values.insert(k.clone(), parsed);
        }
        Ok(Params { values })
    }

    /// A string parameter.
    pub fn str(&self, name: &str) -> Result<String, String> {
        self.values.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("parameter `{name}` must be a string"))
    }
    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> Result<bool, String> {
        self.values.get(name).and_then(Value::as_bool).ok_or_else(|| format!("parameter `{name}` must be a boolean"))
    }
    /// A float parameter.
    pub fn f64(&self, name: &str) -> Result<f64, String> {
        self.values.get(name).and_then(Value::as_f64).ok_or_else(|| format!("parameter `{name}` must be a number"))
    }
    /// A non-negative integer parameter.
    pub fn u64(&self, name: &str) -> Result<u64, String> {
        self.values.get(name).and_then(Value::as_u64).ok_or_else(|| format!("parameter `{name}` must be a non-negative integer"))
    }
}

/// Parse an ARC/OpenBookQA-style multiple-choice row: `question_field` (the stem),
/// `choices.label[]`, `choices.text[]`, `answerKey`. Returns (the stem, `\n`, then one
/// `<label>. <text>` line per choice; the answer key; the text of the first choice whose
/// label equals the key). This is the reference's ai2_arc/openbookqa instruction (without
/// any suffix) and also the first ARC-Challenge decontamination rendering (SOURCES.md §6.2).
/// Errors: a missing field, label/text lists of different lengths, a key not among the labels.
pub fn multiple_choice(text: &str, question_field: &str) -> Result<(String, String, String), String> {
    let row = Row::parse(text)?;
    let question = row.str(question_field)?;
    let labels = row.str_list("choices.label")?;
    let texts = row.str_list("choices.text")?;
    if labels.len() != texts.len() {
        return Err(format!("choices.label has {} items but choices.text has {}", labels.len(), texts.len()));
    }
    let key = row.str("answerKey")?;
    let idx = labels.iter().position(|l| *l == key).ok_or_else(|| format!("answerKey {key:?} is not among the labels {labels:?}"))?;
    let lines: Vec<String> = labels.iter().zip(&texts).map(|(l, t)| format!("{l}. {t}")).collect();
    Ok((format!("{question}\n{}", lines.join("\n")), key.to_string(), texts[idx].to_string()))
}
