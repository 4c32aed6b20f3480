//! `qtask catalog show|check` and the loading of `--catalog` files for `serve`.

use anyhow::Context;
use qtask_engine::catalog::file::{CatalogFile, CatalogSource};
use qtask_engine::catalog::{Catalog, Handler};
use std::path::PathBuf;

/// Reads catalog files; an unreadable one is named.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<CatalogSource>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the catalog {}", path.display()))?;
            Ok(CatalogSource {
                name: path.display().to_string(),
                text,
                dir: path
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.to_path_buf())),
            })
        })
        .collect()
}

/// The built-in catalog with `paths` applied in order.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<(Catalog, CatalogFile)> {
    let sources = read(paths)?;
    Catalog::load(&sources).map_err(|e| anyhow::anyhow!("invalid catalog: {e}"))
}

/// `qtask catalog check FILE…`: validates the files on top of the built-in catalog.
pub fn run_check(paths: &[PathBuf]) -> anyhow::Result<()> {
    let (catalog, merged) = load(paths)?;
    let mine: Vec<String> = read(paths)?
        .iter()
        .filter_map(|source| qtask_engine::catalog::file::parse(source).ok())
        .flat_map(|file| file.actions.into_keys())
        .collect();
    println!(
        "OK: {} resource type(s), {} action(s) in all; from the given file(s): {}",
        merged.resource_types.len(),
        catalog.action_names().len(),
        if mine.is_empty() {
            "no action".to_owned()
        } else {
            mine.join(", ")
        }
    );
    Ok(())
}

/// `qtask catalog show`: the effective catalog, in the catalog format.
pub fn run_show(paths: &[PathBuf]) -> anyhow::Result<()> {
    let (catalog, merged) = load(paths)?;
    let builtin: Vec<&str> = catalog
        .action_names()
        .into_iter()
        .filter(|name| {
            matches!(
                catalog.get(name).map(|a| &a.handler),
                Some(Handler::Query(_) | Handler::Replan(_))
            )
        })
        .collect();
    println!(
        "# Built into qtask (not configurable): {}",
        builtin.join(", ")
    );
    print!(
        "{}",
        toml::to_string(&merged).context("cannot print the catalog")?
    );
    Ok(())
}
