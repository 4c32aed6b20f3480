//! The catalog parser: `Catalog::load` of one user file after the built-in ones.
//!
//! Input: any bytes; only UTF-8 text is a catalog file (the CLI reads files as text).
//! Asserts: loading never panics; when a file loads, the merged catalog printed by
//! `toml::to_string` (what `qtask catalog show` prints) loads again, with the same
//! resource types and actions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qtask_engine::catalog::file::CatalogSource;
use qtask_engine::catalog::Catalog;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((_, merged)) = Catalog::load(&[source(text)]) else {
        return;
    };
    let shown = toml::to_string(&merged)
        .unwrap_or_else(|e| panic!("the merged catalog does not print as TOML: {e}"));
    let (_, again) = Catalog::load(&[source(&shown)])
        .unwrap_or_else(|e| panic!("the printed merged catalog does not load: {e}\n{shown}"));
    assert_eq!(
        again.resource_types.keys().collect::<Vec<_>>(),
        merged.resource_types.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        again.actions.keys().collect::<Vec<_>>(),
        merged.actions.keys().collect::<Vec<_>>()
    );
});

fn source(text: &str) -> CatalogSource {
    CatalogSource {
        name: "fuzz.toml".to_owned(),
        text: text.to_owned(),
        dir: None,
    }
}
