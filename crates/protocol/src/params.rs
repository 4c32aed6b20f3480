//! Request parameters: decoding the form encoding, and the flattening of lists and
//! objects into `name.N` / `name.N.field` names.
//!
//! Decoding rules (see `shared/protocol/README.md` §2–3):
//! - `+` is a space and `%XX` a byte; text is decoded exactly once and must be UTF-8;
//! - a `_` in a *name* stands for `.` (some HTTP stacks rewrite dots); values are never
//!   rewritten;
//! - a name may appear once: a second `a` (or an `a_b` beside `a.b`) is refused.

use percent_encoding::percent_decode;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The deepest nesting a name may have (`a.0.b.1` has depth 4).
pub const MAX_NAME_DEPTH: usize = 8;
/// The most parameters one request may carry (a 100-resource chain with two fields
/// per resource needs about 210).
pub const MAX_PARAMS: usize = 1000;
/// The longest parameter name, in bytes, once decoded.
pub const MAX_NAME_BYTES: usize = 128;
/// The longest parameter value, in bytes, once decoded.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// What is wrong with the parameters, naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter {name} is not valid UTF-8 text")]
    NotUtf8 { name: String },
    #[error("a parameter has an empty name")]
    EmptyName,
    #[error("parameter {name} is given more than once")]
    Duplicate { name: String },
    #[error("parameter name {name:?} is malformed (empty part between dots)")]
    MalformedName { name: String },
    #[error("parameter {name} is given both as a value and as a list or object ({name}.…)")]
    Conflict { name: String },
    #[error(
        "list {name} has no element {name}.{missing}: indexes must run 0, 1, 2, … without gaps"
    )]
    ListGap { name: String, missing: usize },
    #[error("parameter name {name} nests deeper than {max} levels")]
    TooDeep { name: String, max: usize },
    #[error("the request has {count} parameters; at most {max} are accepted")]
    TooMany { count: usize, max: usize },
    #[error("parameter name {name}… is longer than {max} bytes")]
    NameTooLong { name: String, max: usize },
    #[error("parameter {name} is longer than {max} bytes")]
    ValueTooLong { name: String, max: usize },
}

/// Decoded parameters: names normalised (`_` → `.`), unique, sorted byte-wise — the
/// order the signature is computed in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes a query string or an `application/x-www-form-urlencoded` body.
    pub fn decode(form: &[u8]) -> Result<Self, ParamError> {
        // Counted before anything is decoded, so a flood of parameters costs nothing.
        let count = form
            .split(|&b| b == b'&')
            .filter(|part| !part.is_empty())
            .count();
        if count > MAX_PARAMS {
            return Err(ParamError::TooMany {
                count,
                max: MAX_PARAMS,
            });
        }
        let pairs = form
            .split(|&b| b == b'&')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (name, value) = match part.iter().position(|&b| b == b'=') {
                    Some(eq) => (&part[..eq], &part[eq + 1..]),
                    None => (part, &b""[..]),
                };
                let name = decode_component(name).map_err(|raw| ParamError::NotUtf8 {
                    name: String::from_utf8_lossy(&raw).into_owned(),
                })?;
                if name.len() > MAX_NAME_BYTES {
                    return Err(ParamError::NameTooLong {
                        name: name.chars().take(40).collect(),
                        max: MAX_NAME_BYTES,
                    });
                }
                let value = decode_component(value)
                    .map_err(|_| ParamError::NotUtf8 { name: name.clone() })?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(ParamError::ValueTooLong {
                        name,
                        max: MAX_VALUE_BYTES,
                    });
                }
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_pairs(pairs)
    }

    /// Builds parameters from decoded name/value pairs (as a client holds them).
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<Self, ParamError>
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut pairs: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(name, value)| {
                let name: String = name.into();
                if name.is_empty() {
                    return Err(ParamError::EmptyName);
                }
                Ok((normalise_name(name), value.into()))
            })
            .collect::<Result<_, _>>()?;
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(dup) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ParamError::Duplicate {
                name: dup[0].0.clone(),
            });
        }
        Ok(Self { pairs })
    }

    /// The value of a top-level parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    /// Every parameter in signing order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Adds or replaces one parameter (for clients building a request).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let name = normalise_name(name.to_owned());
        match self.pairs.binary_search_by(|(n, _)| n.cmp(&name)) {
            Ok(i) => self.pairs[i].1 = value.into(),
            Err(i) => self.pairs.insert(i, (name, value.into())),
        }
    }

    /// Encodes the parameters as a form (the GET query string or the POST body).
    pub fn encode(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.iter())
            .finish()
    }

    /// Unflattens the parameters for which `keep` is true into a JSON object: `a.N`
    /// becomes a list, `a.b` an object, and every leaf stays a string (the wire has no
    /// types; the catalog parses them).
    pub fn tree(&self, keep: impl Fn(&str) -> bool) -> Result<Map<String, Value>, ParamError> {
        let mut root = Node::Branch(BTreeMap::new());
        for (name, value) in self.iter().filter(|(name, _)| keep(name)) {
            root.insert(name, value)?;
        }
        match root.into_value("")? {
            Value::Object(map) => Ok(map),
            // Only reachable when every top-level name is an index, which callers never
            // pass: treat it as an object keyed by the indexes.
            Value::Array(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect()),
            _ => unreachable!("the root is a branch"),
        }
    }
}

fn normalise_name(name: String) -> String {
    if name.contains('_') {
        name.replace('_', ".")
    } else {
        name
    }
}

fn decode_component(raw: &[u8]) -> Result<String, Vec<u8>> {
    // Most components have nothing to decode: copied at once, not byte by byte into a
    // growing buffer (3–5 % of a `describe`).
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| raw.to_vec());
    }
    let plus_as_space: Vec<u8>;
    let raw = if raw.contains(&b'+') {
        plus_as_space = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        &plus_as_space[..]
    } else {
        raw
    };
    let mut bytes = Vec::with_capacity(raw.len());
    bytes.extend(percent_decode(raw));
    String::from_utf8(bytes).map_err(|e| e.into_bytes())
}

enum Node {
    Leaf(String),
    Branch(BTreeMap<String, Node>),
}

impl Node {
    fn insert(&mut self, name: &str, value: &str) -> Result<(), ParamError> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(ParamError::MalformedName {
                name: name.to_owned(),
            });
        }
        if parts.len() > MAX_NAME_DEPTH {
            return Err(ParamError::TooDeep {
                name: name.to_owned(),
                max: MAX_NAME_DEPTH,
            });
        }
        let mut node = self;
        for (depth, part) in parts.iter().enumerate() {
            let Node::Branch(children) = node else {
                return Err(ParamError::Conflict {
                    name: parts[..depth].join("."),
                });
            };
            let last = depth + 1 == parts.len();
            if last {
                // Names are unique and sorted, so a child already here has children:
                // `a.0` sorts after `a`, and `a` after nothing it could conflict with.
                if children.contains_key(*part) {
                    return Err(ParamError::Conflict {
                        name: name.to_owned(),
                    });
                }
                children.insert((*part).to_owned(), Node::Leaf(value.to_owned()));
                return Ok(());
            }
            node = children
                .entry((*part).to_owned())
                .or_insert_with(|| Node::Branch(BTreeMap::new()));
        }
        unreachable!("names have at least one part")
    }

    fn into_value(self, path: &str) -> Result<Value, ParamError> {
        let children = match self {
            Node::Leaf(value) => return Ok(Value::String(value)),
            Node::Branch(children) => children,
        };
        let child_path = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        let indexes: Option<Vec<usize>> = children.keys().map(|k| list_index(k)).collect();
        match indexes {
            Some(mut indexes) if !path.is_empty() => {
                indexes.sort_unstable();
                if let Some(missing) = indexes.iter().enumerate().find(|(i, n)| i != *n) {
                    return Err(ParamError::ListGap {
                        name: path.to_owned(),
                        missing: missing.0,
                    });
                }
                let mut items: Vec<(usize, Node)> = children
                    .into_iter()
                    .map(|(k, v)| (list_index(&k).expect("checked above"), v))
                    .collect();
                items.sort_unstable_by_key(|(i, _)| *i);
                items
                    .into_iter()
                    .map(|(i, node)| node.into_value(&child_path(&i.to_string())))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            _ => children
                .into_iter()
                .map(|(key, node)| {
                    let value = node.into_value(&child_path(&key))?;
                    Ok((key, value))
                })
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
        }
    }
}

/// A list index is a canonical decimal number (`0`, `7`, `10`; not `01` or `+1`).
fn list_index(key: &str) -> Option<usize> {
    let canonical = !key.is_empty()
        && key.len() <= 6
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'));
    canonical.then(|| key.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {

    #[test]
    fn limits_are_named_in_the_refusal() {
        let many: String = (0..=MAX_PARAMS).map(|i| format!("p{i}=1&")).collect();
        assert_eq!(
            Params::decode(many.as_bytes()).unwrap_err().to_string(),
            format!(
                "the request has {} parameters; at most {MAX_PARAMS} are accepted",
                MAX_PARAMS + 1
            )
        );
        let long_name = format!("{}=1", "n".repeat(MAX_NAME_BYTES + 1));
        assert!(Params::decode(long_name.as_bytes())
            .unwrap_err()
            .to_string()
            .ends_with(&format!("is longer than {MAX_NAME_BYTES} bytes")));
        let long_value = format!("v={}", "x".repeat(MAX_VALUE_BYTES + 1));
        assert_eq!(
            Params::decode(long_value.as_bytes())
                .unwrap_err()
                .to_string(),
            format!("parameter v is longer than {MAX_VALUE_BYTES} bytes")
        );
        let at_limit = format!("v={}", "x".repeat(MAX_VALUE_BYTES));
        assert!(Params::decode(at_limit.as_bytes()).is_ok());
    }

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn tree(form: &str) -> Result<Value, ParamError> {
        Params::decode(form.as_bytes())?
            .tree(|_| true)
            .map(Value::Object)
    }

    #[test]
    fn decodes_each_component_exactly_once() {
        let p = Params::decode(b"a=x+y%20z&b=%2541&c=%E6%B5%8B&d&e=").unwrap();
        assert_eq!(p.get("a"), Some("x y z"));
        assert_eq!(p.get("b"), Some("%41"), "decoded twice");
        assert_eq!(p.get("c"), Some("测"));
        assert_eq!(p.get("d"), Some(""));
        assert_eq!(p.get("e"), Some(""));
    }

    #[test]
    fn ampersand_and_equals_inside_values() {
        let p = Params::decode(b"password=a%3Db%26c%3Dd%2520%2Bx%3F&x=1=2").unwrap();
        assert_eq!(p.get("password"), Some("a=b&c=d%20+x?"));
        assert_eq!(p.get("x"), Some("1=2"), "only the first = splits");
    }

    #[test]
    fn underscores_in_names_are_dots_but_values_are_untouched() {
        let p = Params::decode(b"instance_name=a_b&instanceIds_0=ins-1").unwrap();
        assert_eq!(p.get("instance.name"), Some("a_b"));
        assert_eq!(
            tree("instanceIds_0=x&instanceIds.1=y").unwrap(),
            json!({"instanceIds": ["x", "y"]})
        );
    }

    #[test]
    fn refusals_name_the_parameter() {
        let cases: &[(&str, ParamError)] = &[
            ("a=1&a=2", ParamError::Duplicate { name: "a".into() }),
            ("a.b=1&a_b=2", ParamError::Duplicate { name: "a.b".into() }),
            ("=1", ParamError::EmptyName),
            (
                "a..b=1",
                ParamError::MalformedName {
                    name: "a..b".into(),
                },
            ),
            ("a.=1", ParamError::MalformedName { name: "a.".into() }),
            ("a=1&a.0=2", ParamError::Conflict { name: "a".into() }),
            ("a.0=1&a.0.b=2", ParamError::Conflict { name: "a.0".into() }),
            (
                "ids.0=a&ids.2=c",
                ParamError::ListGap {
                    name: "ids".into(),
                    missing: 1,
                },
            ),
            (
                "ids.1=a",
                ParamError::ListGap {
                    name: "ids".into(),
                    missing: 0,
                },
            ),
            (
                "f.0.v.1=a",
                ParamError::ListGap {
                    name: "f.0.v".into(),
                    missing: 0,
                },
            ),
            (
                "a.b.c.d.e.f.g.h.i=1",
                ParamError::TooDeep {
                    name: "a.b.c.d.e.f.g.h.i".into(),
                    max: 8,
                },
            ),
            ("a=%FF", ParamError::NotUtf8 { name: "a".into() }),
        ];
        for (form, expected) in cases {
            let got = Params::decode(form.as_bytes()).and_then(|p| p.tree(|_| true));
            assert_eq!(got.as_ref().err(), Some(expected), "for {form:?}");
        }
        // Bytes that are not UTF-8 as sent, not only once decoded.
        for (form, name) in [(&b"a=\xff"[..], "a"), (&b"b\xffc=1"[..], "b\u{fffd}c")] {
            assert_eq!(
                Params::decode(form).err(),
                Some(ParamError::NotUtf8 { name: name.into() }),
                "for {form:?}"
            );
        }
        assert_eq!(
            Params::decode(b"a=x+y%2Bz&b=plain").map(|p| p.get("a").map(str::to_owned)),
            Ok(Some("x y+z".to_owned()))
        );
        let message = ParamError::ListGap {
            name: "ids".into(),
            missing: 1,
        }
        .to_string();
        assert!(message.contains("ids.1"), "{message}");
    }

    #[test]
    fn lists_objects_and_nesting() {
        assert_eq!(
            tree("filters.0.name=zone&filters.0.values.0=z3&filters.0.values.1=z4&filters.1.name=status&limit=20")
                .unwrap(),
            json!({
                "filters": [{"name": "zone", "values": ["z3", "z4"]}, {"name": "status"}],
                "limit": "20",
            })
        );
        // x.10 sorts before x.2 as text, but the list keeps numeric order.
        let form: String = (0..12).map(|i| format!("x.{i}={i}&")).collect();
        let expected: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        assert_eq!(tree(&form).unwrap(), json!({ "x": expected }));
        // A non-canonical index makes an object, not a list.
        assert_eq!(tree("a.01=x").unwrap(), json!({"a": {"01": "x"}}));
        // Huge indexes are not lists and allocate nothing.
        assert_eq!(
            tree("a.99999999999=x").unwrap(),
            json!({"a": {"99999999999": "x"}})
        );
    }

    #[test]
    fn unicode_names_and_values() {
        let p = Params::decode("名前=caf%C3%A9+%F0%9F%9A%80".as_bytes()).unwrap();
        assert_eq!(p.get("名前"), Some("café 🚀"));
    }

    #[test]
    fn tree_keeps_only_selected_names() {
        let p = Params::decode(b"Action=X&Nonce=1&ids.0=a").unwrap();
        let t = p
            .tree(|n| n.chars().next().is_some_and(|c| c.is_lowercase()))
            .unwrap();
        assert_eq!(Value::Object(t), json!({"ids": ["a"]}));
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(
            pairs in proptest::collection::btree_map("[a-zA-Z][a-zA-Z0-9.]{0,10}", ".*", 0..12)
        ) {
            let params = Params::from_pairs(pairs.clone()).unwrap();
            let decoded = Params::decode(params.encode().as_bytes()).unwrap();
            prop_assert_eq!(decoded, params);
        }

        #[test]
        fn decode_never_panics(form in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = Params::decode(&form) {
                let _ = p.tree(|_| true);
            }
        }

        #[test]
        fn lists_of_any_length_unflatten_in_order(values in proptest::collection::vec("[^&]*", 1..30)) {
            let params = Params::from_pairs(
                values.iter().enumerate().map(|(i, v)| (format!("ids.{i}"), v.clone())),
            ).unwrap();
            let tree = params.tree(|_| true).unwrap();
            prop_assert_eq!(&tree["ids"], &json!(values));
        }
    }
}
