//! Typed access to an action's parameters. Every refusal names the parameter (with its
//! index for list elements), so the caller knows exactly what to fix.

use qtask_core::ResourceId;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// The most resource IDs one batch call may name.
pub const MAX_BATCH_IDS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {param} {reason}")]
pub struct ArgError {
    pub param: String,
    pub reason: String,
}

impl ArgError {
    pub fn new(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            reason: reason.into(),
        }
    }
}

pub type ArgResult<T> = Result<T, ArgError>;

/// A view of one call's parameters.
#[derive(Clone, Copy)]
pub struct Args<'a>(pub &'a Map<String, Value>);

impl<'a> Args<'a> {
    /// A single text value, if given.
    pub fn text(&self, name: &str) -> ArgResult<Option<&'a str>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ArgError::new(
                name,
                "must be a single value, not a list or object",
            )),
        }
    }

    pub fn required_text(&self, name: &str) -> ArgResult<&'a str> {
        self.text(name)?
            .ok_or_else(|| ArgError::new(name, "is required"))
    }

    /// Text of 1 to `max_chars` characters, if given.
    pub fn bounded_text(&self, name: &str, max_chars: usize) -> ArgResult<Option<&'a str>> {
        match self.text(name)? {
            Some("") => Err(ArgError::new(name, "must not be empty")),
            Some(s) if s.chars().count() > max_chars => Err(ArgError::new(
                name,
                format!("must be at most {max_chars} characters"),
            )),
            other => Ok(other),
        }
    }

    /// An integer within `min..=max`, if given.
    pub fn int(&self, name: &str, min: i64, max: i64) -> ArgResult<Option<i64>> {
        let Some(text) = self.text(name)? else {
            return Ok(None);
        };
        let bad = || ArgError::new(name, format!("must be an integer from {min} to {max}"));
        let value: i64 = text.trim().parse().map_err(|_| bad())?;
        if value < min || value > max {
            return Err(bad());
        }
        Ok(Some(value))
    }

    /// A flag: `1`/`true` or `0`/`false`, if given.
    pub fn flag(&self, name: &str) -> ArgResult<Option<bool>> {
        match self.text(name)? {
            None => Ok(None),
            Some("1" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("0" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(_) => Err(ArgError::new(name, "must be 0, 1, true or false")),
        }
    }

    /// A point in time: `YYYY-MM-DD HH:MM:SS` (UTC) or Unix seconds, as milliseconds.
    pub fn instant(&self, name: &str) -> ArgResult<Option<i64>> {
        self.text(name)?
            .map(|text| {
                crate::time::parse(text).ok_or_else(|| {
                    ArgError::new(
                        name,
                        "must be YYYY-MM-DD HH:MM:SS (UTC) or a Unix time in seconds",
                    )
                })
            })
            .transpose()
    }

    /// A list of text values (`name.0`, `name.1`, …); empty when absent.
    pub fn text_list(&self, name: &str) -> ArgResult<Vec<&'a str>> {
        match self.0.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.as_str()),
                    _ => Err(ArgError::new(
                        format!("{name}.{i}"),
                        "must be a single value",
                    )),
                })
                .collect(),
            Some(_) => Err(ArgError::new(
                name,
                format!("must be a list given as {name}.0, {name}.1, …"),
            )),
        }
    }

    /// One resource ID of the type whose prefix is `prefix`.
    pub fn resource_id(&self, name: &str, prefix: &'static str) -> ArgResult<ResourceId> {
        let text = self.required_text(name)?;
        ResourceId::parse(prefix, text)
            .map_err(|e| ArgError::new(name, format!("{e} (got {text:?})")))
    }

    /// A list of 1 to [`MAX_BATCH_IDS`] distinct resource IDs.
    pub fn resource_ids(&self, name: &str, prefix: &'static str) -> ArgResult<Vec<ResourceId>> {
        let texts = self.text_list(name)?;
        if texts.is_empty() {
            return Err(ArgError::new(
                name,
                format!("is required: give {name}.0, {name}.1, …"),
            ));
        }
        if texts.len() > MAX_BATCH_IDS {
            return Err(ArgError::new(
                name,
                format!(
                    "names {} resources; at most {MAX_BATCH_IDS} per call",
                    texts.len()
                ),
            ));
        }
        let mut seen = HashSet::with_capacity(texts.len());
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let param = format!("{name}.{i}");
                let id = ResourceId::parse(prefix, text)
                    .map_err(|e| ArgError::new(&param, format!("{e} (got {text:?})")))?;
                if !seen.insert(id.clone()) {
                    return Err(ArgError::new(
                        &param,
                        format!("repeats {id}; name each resource once"),
                    ));
                }
                Ok(id)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn refusals_name_the_parameter() {
        let map = args(json!({
            "n": "12x", "ids": ["ins-aaaaaaaa", "bogus"], "dup": ["ins-aaaaaaaa", "ins-aaaaaaaa"],
            "scalar": "ins-aaaaaaaa", "flag": "yes", "list": ["a"], "empty": "",
        }));
        let a = Args(&map);
        let msg = |e: ArgError| e.to_string();
        assert_eq!(
            msg(a.int("n", 1, 100).unwrap_err()),
            "parameter n must be an integer from 1 to 100"
        );
        assert!(msg(a.resource_ids("ids", "ins").unwrap_err())
            .starts_with("parameter ids.1 must look like ins-"));
        assert!(msg(a.resource_ids("dup", "ins").unwrap_err())
            .starts_with("parameter dup.1 repeats ins-aaaaaaaa"));
        assert!(msg(a.resource_ids("scalar", "ins").unwrap_err()).contains("scalar.0, scalar.1"));
        assert!(msg(a.resource_ids("missing", "ins").unwrap_err())
            .starts_with("parameter missing is required"));
        assert_eq!(
            msg(a.flag("flag").unwrap_err()),
            "parameter flag must be 0, 1, true or false"
        );
        assert!(msg(a.text("list").unwrap_err()).contains("single value"));
        assert!(msg(a.bounded_text("empty", 5).unwrap_err()).contains("must not be empty"));
        assert_eq!(
            a.required_text("nope").unwrap_err().to_string(),
            "parameter nope is required"
        );
    }

    #[test]
    fn batch_limit() {
        let ids: Vec<String> = (0..101).map(|i| format!("ins-{i:08}")).collect();
        let map = args(json!({ "ids": ids }));
        let e = Args(&map).resource_ids("ids", "ins").unwrap_err();
        assert!(e.to_string().contains("at most 100"), "{e}");
        let map = args(json!({ "ids": ids[..100] }));
        assert_eq!(Args(&map).resource_ids("ids", "ins").unwrap().len(), 100);
    }

    #[test]
    fn numbers_at_the_edges() {
        let map = args(json!({"big": "99999999999999999999999", "neg": "-1", "max": "100"}));
        let a = Args(&map);
        assert!(a.int("big", 0, 100).is_err());
        assert!(a.int("neg", 0, 100).is_err());
        assert_eq!(a.int("max", 0, 100).unwrap(), Some(100));
        assert_eq!(a.int("absent", 0, 100).unwrap(), None);
    }
}
