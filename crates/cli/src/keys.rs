//! `qtask keys create|list|disable|enable`: API key management on a data directory,
//! also while a server runs on it (SQLite lets both processes write).

use crate::credentials;
use crate::serve::{now_millis, open_store};
use anyhow::{bail, Context};
use qtask_core::SecretId;
use qtask_store::{NewApiKey, Store};
use std::path::Path;

/// The account the first start creates.
pub const DEFAULT_ACCOUNT: &str = "default";

/// Creates a key pair for `account` (creating the account if needed).
pub async fn create(store: &dyn Store, account: &str) -> anyhow::Result<(String, String)> {
    let account = match store.account_by_name(account).await? {
        Some(id) => id,
        None => store.create_account(account, now_millis()).await?,
    };
    let (secret_id, secret_key) = credentials::generate();
    store
        .create_key(
            NewApiKey {
                secret_id: secret_id.parse().context("generated SecretId")?,
                secret_key: secret_key.clone(),
                account,
            },
            now_millis(),
        )
        .await?;
    Ok((secret_id, secret_key))
}

pub async fn run_create(data_dir: &Path, account: &str) -> anyhow::Result<()> {
    if account.is_empty() || account.len() > 64 {
        bail!("--account must be 1 to 64 characters");
    }
    let store = open_store(data_dir)?;
    let (secret_id, secret_key) = create(&store, account).await?;
    println!("Created an API key for account {account:?} (the SecretKey is shown only now):");
    println!("  SecretId:  {secret_id}");
    println!("  SecretKey: {secret_key}");
    Ok(())
}

pub async fn run_list(data_dir: &Path) -> anyhow::Result<()> {
    let store = open_store(data_dir)?;
    let keys = store.keys().await?;
    println!(
        "{:<38} {:<20} {:<9} CREATED (UTC)",
        "SECRET ID", "ACCOUNT", "STATE"
    );
    for key in keys {
        println!(
            "{:<38} {:<20} {:<9} {}",
            key.secret_id,
            key.account_name,
            if key.enabled { "enabled" } else { "disabled" },
            qtask_engine::time::format(key.created_at)
        );
    }
    Ok(())
}

pub async fn run_set_enabled(
    data_dir: &Path,
    secret_id: &str,
    enabled: bool,
) -> anyhow::Result<()> {
    let store = open_store(data_dir)?;
    let id: SecretId = secret_id
        .parse()
        .map_err(|e| anyhow::anyhow!("SecretId {e}"))?;
    if !store.set_key_enabled(&id, enabled).await? {
        bail!("there is no key {secret_id} in {}", data_dir.display());
    }
    println!(
        "{} {secret_id}",
        if enabled { "Enabled" } else { "Disabled" }
    );
    Ok(())
}
