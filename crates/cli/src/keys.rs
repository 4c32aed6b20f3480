//! `qtask keys create|list|disable|enable|block|unblock|rotate-master`: API key and
//! account management on a data directory, also while a server runs on it (SQLite lets
//! both processes write), and the master key that seals the SecretKeys at rest.

use crate::credentials;
use crate::database::{self, StoreArgs};
use crate::serve::now_millis;
use anyhow::{anyhow, bail, Context};
use qtask_core::SecretId;
use qtask_store::{KeyAccess, NewApiKey, RequestRate, Store};
use qtask_store_sqlite::MasterKey;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The master key qtask generates on first start when none is given: DATA_DIR/master.key.
pub const MASTER_KEY_FILE: &str = "master.key";
/// A master key given as base64 text instead of a file.
pub const MASTER_KEY_ENV: &str = "QTASK_MASTER_KEY";

/// The master key of `data_dir`: from `file` when given, else from `QTASK_MASTER_KEY`,
/// else DATA_DIR/master.key (generated on first use).
pub fn master_key(data_dir: &Path, file: Option<&Path>) -> anyhow::Result<MasterKey> {
    if let Some(file) = file {
        return read_master_key(file);
    }
    if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
        return MasterKey::from_base64(&text).map_err(|e| anyhow!("{MASTER_KEY_ENV}: {e}"));
    }
    let default = data_dir.join(MASTER_KEY_FILE);
    if !default.exists() {
        let text = MasterKey::generate().map_err(anyhow::Error::msg)?;
        write_key_file(&default, &text, false)?;
    }
    read_master_key(&default)
}

/// Reads a master key file, refusing one that the group or others may read or write.
pub fn read_master_key(path: &Path) -> anyhow::Result<MasterKey> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the master key file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the master key file {} is open to its group or others (mode {:03o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the master key file {}", path.display()))?;
    MasterKey::from_base64(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Writes a key file (mode 0600) whole or not at all: through a temporary file, then
/// linked into place (`replace` = false: a file made meanwhile by another process wins)
/// or renamed over the old one.
fn write_key_file(path: &Path, text: &str, replace: bool) -> anyhow::Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    let placed = if replace {
        std::fs::rename(&temporary, path)
    } else {
        std::fs::hard_link(&temporary, path).or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
    };
    let _ = std::fs::remove_file(&temporary);
    placed.with_context(|| format!("cannot write {}", path.display()))
}

/// `qtask keys rotate-master --new-key-file FILE`: re-seals every SecretKey with the
/// new key in one transaction. With the default key file, DATA_DIR/master.key then
/// holds the new key; otherwise the server must be started with the new one.
pub async fn run_rotate_master(store_at: &StoreArgs, new_key_file: &Path) -> anyhow::Result<()> {
    // A running server holds the old key in memory: it would fail every request. (On a
    // shared PostgreSQL database, stop every node first: see docs/operations.md.)
    let _lock = crate::serve::lock_data_dir(&store_at.data_dir)?;
    let new_key = read_master_key(new_key_file)?;
    let count = database::rotate_master_key(
        &store_at.data_dir,
        store_at.master_key_file.as_deref(),
        &store_at.database,
        new_key,
    )
    .await?;
    let data_dir = &store_at.data_dir;
    let default_file =
        store_at.master_key_file.is_none() && std::env::var_os(MASTER_KEY_ENV).is_none();
    if default_file {
        let text = std::fs::read_to_string(new_key_file)?;
        write_key_file(&data_dir.join(MASTER_KEY_FILE), &text, true)?;
        println!(
            "Re-sealed {count} SecretKeys; {} now holds the new master key.",
            data_dir.join(MASTER_KEY_FILE).display()
        );
    } else {
        println!(
            "Re-sealed {count} SecretKeys; from now on start qtask with --master-key-file {} (or {MASTER_KEY_ENV} set to its content).",
            new_key_file.display()
        );
    }
    Ok(())
}

/// The account the first start creates.
pub const DEFAULT_ACCOUNT: &str = "default";

/// The restrictions `qtask keys create` can put on a key.
#[derive(Debug, Default, clap::Args)]
pub struct Restrictions {
    /// Actions the key may call (comma-separated); others answer 4101.
    #[arg(long, value_delimiter = ',', value_name = "ACTIONS")]
    pub allow_actions: Option<Vec<String>>,
    /// Resource IDs or patterns (`ins-*`) the key may operate on (comma-separated);
    /// mutating calls naming others answer 4102.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub allow_resources: Option<Vec<String>>,
    /// The key may call only actions that change nothing; others answer 4101.
    #[arg(long)]
    pub read_only: bool,
    /// The key's own request rate, `N` or `N/BURST` per second (over it: 4400).
    #[arg(long, value_name = "RATE")]
    pub rate: Option<RequestRate>,
}

impl Restrictions {
    fn access(self) -> anyhow::Result<KeyAccess> {
        let list = |name: &str, list: Option<Vec<String>>| -> anyhow::Result<_> {
            let Some(list) = list else { return Ok(None) };
            let list: Vec<String> = list.into_iter().map(|s| s.trim().to_owned()).collect();
            if list.is_empty() || list.iter().any(|item| item.is_empty()) {
                bail!("--{name} needs a comma-separated list without empty items");
            }
            Ok(Some(list))
        };
        if let Some(pattern) = self
            .allow_resources
            .iter()
            .flatten()
            .find(|p| p.trim_end_matches('*').contains('*'))
        {
            bail!("--allow-resources: {pattern:?}: `*` may only end a pattern");
        }
        Ok(KeyAccess {
            actions: list("allow-actions", self.allow_actions)?,
            resources: list("allow-resources", self.allow_resources)?,
            read_only: self.read_only,
            rate: self.rate,
        })
    }
}

/// What `qtask keys list` shows of a key's restrictions.
fn describe(access: &KeyAccess) -> String {
    let mut parts = Vec::new();
    if access.read_only {
        parts.push("read-only".to_owned());
    }
    if let Some(actions) = &access.actions {
        parts.push(format!("actions={}", actions.join(",")));
    }
    if let Some(resources) = &access.resources {
        parts.push(format!("resources={}", resources.join(",")));
    }
    if let Some(rate) = access.rate {
        parts.push(format!("rate={}/{}", rate.per_second, rate.burst));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Creates an unrestricted key pair for `account` (creating the account if needed).
pub async fn create(store: &dyn Store, account: &str) -> anyhow::Result<(String, String)> {
    create_restricted(store, account, KeyAccess::default()).await
}

async fn create_restricted(
    store: &dyn Store,
    account: &str,
    access: KeyAccess,
) -> anyhow::Result<(String, String)> {
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
                access,
            },
            now_millis(),
        )
        .await?;
    Ok((secret_id, secret_key))
}

pub async fn run_create(
    store_at: &StoreArgs,
    account: &str,
    restrictions: Restrictions,
) -> anyhow::Result<()> {
    if account.is_empty() || account.len() > 64 {
        bail!("--account must be 1 to 64 characters");
    }
    let access = restrictions.access()?;
    let store = store_at.open().await?;
    let (secret_id, secret_key) = create_restricted(store.as_ref(), account, access).await?;
    println!("Created an API key for account {account:?} (the SecretKey is shown only now):");
    println!("  SecretId:  {secret_id}");
    println!("  SecretKey: {secret_key}");
    Ok(())
}

pub async fn run_list(store_at: &StoreArgs) -> anyhow::Result<()> {
    let store = store_at.open().await?;
    let keys = store.keys().await?;
    println!(
        "{:<38} {:<20} {:<9} {:<5} {:<24} RESTRICTIONS",
        "SECRET ID", "ACCOUNT", "STATE", "MAIN", "CREATED (UTC)"
    );
    for key in keys {
        let state = match (key.account_blocked, key.enabled) {
            (true, _) => "blocked",
            (false, true) => "enabled",
            (false, false) => "disabled",
        };
        println!(
            "{:<38} {:<20} {:<9} {:<5} {:<24} {}",
            key.secret_id,
            key.account_name,
            state,
            if key.main { "yes" } else { "no" },
            qtask_engine::time::format(key.created_at),
            describe(&key.access)
        );
    }
    Ok(())
}

pub async fn run_set_enabled(
    store_at: &StoreArgs,
    secret_id: &str,
    enabled: bool,
) -> anyhow::Result<()> {
    let store = store_at.open().await?;
    let id: SecretId = secret_id
        .parse()
        .map_err(|e| anyhow::anyhow!("SecretId {e}"))?;
    if !store.set_key_enabled(&id, enabled).await? {
        bail!("there is no key {secret_id} in the {}", store_at.describe());
    }
    println!(
        "{} {secret_id}",
        if enabled { "Enabled" } else { "Disabled" }
    );
    Ok(())
}

/// `qtask keys block|unblock ACCOUNT`: every key of a blocked account answers 4300.
pub async fn run_set_blocked(
    store_at: &StoreArgs,
    account: &str,
    blocked: bool,
) -> anyhow::Result<()> {
    let store = store_at.open().await?;
    if !store.set_account_blocked(account, blocked).await? {
        bail!(
            "there is no account {account:?} in the {}",
            store_at.describe()
        );
    }
    println!(
        "{} account {account:?}",
        if blocked { "Blocked" } else { "Unblocked" }
    );
    Ok(())
}
