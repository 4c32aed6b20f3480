//! The parameter decoder and the unflattening of `name.N.field` names.
//!
//! Input: any bytes, taken as a query string or form body. Asserts, for every input
//! the decoder accepts: names are unique, sorted, normalised and within the limits;
//! encoding then decoding gives the same parameters; and when `tree()` accepts them,
//! flattening the tree back gives exactly the parameters it was built from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qtask_protocol::params::{Params, MAX_NAME_BYTES, MAX_NAME_DEPTH, MAX_PARAMS, MAX_VALUE_BYTES};
use serde_json::Value;

fuzz_target!(|form: &[u8]| {
    let Ok(params) = Params::decode(form) else {
        return;
    };
    check_normalised(&params);

    let encoded = params.encode();
    let again = Params::decode(encoded.as_bytes())
        .unwrap_or_else(|e| panic!("re-decoding {encoded:?} failed: {e}"));
    assert_eq!(again, params, "encode/decode changed the parameters");

    let Ok(tree) = params.tree(|_| true) else {
        return;
    };
    let mut flat = Vec::new();
    flatten("", &Value::Object(tree), &mut flat);
    flat.sort();
    let original: Vec<(String, String)> = params
        .iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(flat, original, "tree() lost, added or changed a parameter");
});

fn check_normalised(params: &Params) {
    assert!(params.len() <= MAX_PARAMS);
    let names: Vec<&str> = params.iter().map(|(n, _)| n).collect();
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "names not unique and sorted: {names:?}"
    );
    for (name, value) in params.iter() {
        assert!(!name.is_empty(), "empty name accepted");
        assert!(!name.contains('_'), "name {name:?} kept an underscore");
        assert!(name.len() <= MAX_NAME_BYTES, "name {name:?} over the limit");
        assert!(
            value.len() <= MAX_VALUE_BYTES,
            "value of {name} over the limit"
        );
        assert_eq!(
            params.get(name),
            Some(value),
            "get({name:?}) disagrees with iter()"
        );
    }
}

/// The inverse of `tree()`: `a.N` for list items, `a.b` for object fields.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::String(leaf) => {
            assert!(
                prefix.split('.').count() <= MAX_NAME_DEPTH,
                "{prefix} is deeper than the limit"
            );
            out.push((prefix.to_owned(), leaf.clone()));
        }
        Value::Array(items) => {
            assert!(!items.is_empty(), "empty list at {prefix}");
            for (i, item) in items.iter().enumerate() {
                flatten(&join(&i.to_string()), item, out);
            }
        }
        Value::Object(fields) => {
            for (key, field) in fields {
                flatten(&join(key), field, out);
            }
        }
        other => panic!("tree() produced a non-string leaf {other:?} at {prefix}"),
    }
}
