//! Where the store lives: the embedded SQLite file in the data directory (the default,
//! one node), or a PostgreSQL database that several nodes share.

use crate::credentials;
use crate::keys;
use anyhow::Context;
use qtask_store::Store;
use qtask_store_sql::{MasterKey, SqlStore};
use std::path::Path;
use std::sync::Arc;

/// The SQLite database's file name in the data directory.
pub const DATABASE_FILE: &str = "qtask.db";

/// The store a command uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Database {
    /// DATA_DIR/qtask.db, held by one process.
    #[default]
    Sqlite,
    /// A PostgreSQL URL; every node given the same one shares its work.
    Postgres(String),
}

impl std::str::FromStr for Database {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        if text == "sqlite" {
            Ok(Self::Sqlite)
        } else if qtask_store_postgres::is_postgres_url(text) {
            Ok(Self::Postgres(text.to_owned()))
        } else {
            anyhow::bail!(
                "database must be `sqlite` or a postgres:// (or postgresql://) URL, not {:?}",
                redacted(text)
            )
        }
    }
}

impl Database {
    /// For the start-up line: what and where, without a password.
    pub fn describe(&self, data_dir: &Path) -> String {
        match self {
            Self::Sqlite => format!(
                "data in {} (SQLite, WAL, synchronous=FULL)",
                data_dir.display()
            ),
            Self::Postgres(url) => format!(
                "database {} (PostgreSQL, shared by every node given it)",
                redacted(url)
            ),
        }
    }
}

/// `url` without its password.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// The options of every command that opens the store (`qtask keys …`, `qtask migrate`).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The data directory (the SQLite database, the master key).
    #[arg(
        long,
        env = "QTASK_DATA_DIR",
        default_value = "qtask-data",
        global = true
    )]
    pub data_dir: std::path::PathBuf,
    /// The master key file that seals the SecretKeys (as for `qtask serve`).
    #[arg(long, env = "QTASK_MASTER_KEY_FILE", global = true)]
    pub master_key_file: Option<std::path::PathBuf>,
    /// `sqlite` (DATA_DIR/qtask.db) or the postgres:// URL the servers use.
    #[arg(long, env = "QTASK_DATABASE", default_value = "sqlite", global = true)]
    pub database: Database,
}

impl StoreArgs {
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        open_store(
            &self.data_dir,
            self.master_key_file.as_deref(),
            &self.database,
        )
        .await
    }

    /// Where the store is, for messages.
    pub fn describe(&self) -> String {
        self.database.describe(&self.data_dir)
    }
}

/// Opens the store (creating the data directory if needed) with its master key, and
/// seals any SecretKey still stored in plain text (a one-time step).
pub async fn open_store(
    data_dir: &Path,
    master_key_file: Option<&Path>,
    database: &Database,
) -> anyhow::Result<Arc<dyn Store>> {
    credentials::create_private_dir(data_dir)?;
    let master_key = keys::master_key(data_dir, master_key_file)?;
    match database {
        Database::Sqlite => sealed(open_sqlite(data_dir)?.with_master_key(master_key)).await,
        Database::Postgres(url) => {
            sealed(open_postgres(url).await?.with_master_key(master_key)).await
        }
    }
}

/// Re-seals every SecretKey under `new` (see `qtask keys rotate-master`).
pub async fn rotate_master_key(
    data_dir: &Path,
    master_key_file: Option<&Path>,
    database: &Database,
    new: MasterKey,
) -> anyhow::Result<usize> {
    let current = keys::master_key(data_dir, master_key_file)?;
    let count = match database {
        Database::Sqlite => {
            open_sqlite(data_dir)?
                .with_master_key(current)
                .rotate_master_key(new)
                .await?
        }
        Database::Postgres(url) => {
            open_postgres(url)
                .await?
                .with_master_key(current)
                .rotate_master_key(new)
                .await?
        }
    };
    Ok(count)
}

/// Applies the migrations the database lacks; returns its schema version.
pub async fn migrate(data_dir: &Path, database: &Database) -> anyhow::Result<u32> {
    match database {
        Database::Sqlite => {
            credentials::create_private_dir(data_dir)?;
            open_sqlite(data_dir)?;
            Ok(qtask_store_sqlite::SCHEMA_VERSION)
        }
        Database::Postgres(url) => {
            let url = url.clone();
            tokio::task::spawn_blocking(move || qtask_store_postgres::migrate(&url))
                .await?
                .context("cannot migrate the PostgreSQL database")
        }
    }
}

fn open_sqlite(data_dir: &Path) -> anyhow::Result<qtask_store_sqlite::SqliteStore> {
    let path = data_dir.join(DATABASE_FILE);
    qtask_store_sqlite::open(&path)
        .with_context(|| format!("cannot open the store {}", path.display()))
}

async fn open_postgres(url: &str) -> anyhow::Result<qtask_store_postgres::PostgresStore> {
    let url = url.to_owned();
    // The PostgreSQL client blocks: it connects off the async threads.
    tokio::task::spawn_blocking(move || qtask_store_postgres::open(&url))
        .await?
        .context("cannot open the PostgreSQL store")
}

async fn sealed<M>(store: SqlStore<M>) -> anyhow::Result<Arc<dyn Store>>
where
    M: r2d2::ManageConnection,
    M::Connection: qtask_store_sql::sql::Db,
{
    let sealed = store.seal_plaintext_keys().await?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed the SecretKeys stored in plain text");
    }
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_sqlite_or_a_postgres_url() {
        assert_eq!("sqlite".parse::<Database>().unwrap(), Database::Sqlite);
        let url = "postgres://qtask:secret@db.internal:5432/qtask";
        assert_eq!(
            url.parse::<Database>().unwrap(),
            Database::Postgres(url.into())
        );
        let error = "mysql://u:pw@h/db".parse::<Database>().unwrap_err();
        assert!(error.to_string().contains("postgres://"), "{error}");
        assert!(!error.to_string().contains("pw"), "no password in: {error}");
    }

    #[test]
    fn the_description_hides_the_password() {
        let db = Database::Postgres("postgres://qtask:secret@db.internal/qtask".into());
        let text = db.describe(Path::new("d"));
        assert!(
            text.contains("db.internal") && !text.contains("secret"),
            "{text}"
        );
    }
}
