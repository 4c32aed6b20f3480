//! The `qtask` command: `serve`, `keys`, `call` and `catalog`.

use clap::{Parser, Subcommand};
use qtask::config::{ServeArgs, ServeConfig};
use qtask::{call, catalog, keys};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "qtask",
    version,
    about = "A durable async task engine behind the Tencent Cloud API 2.0 protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP and HTTPS API at /v2/index.php, workers, simulated CVM).
    Serve(Box<ServeArgs>),
    /// Manage API keys in a data directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[arg(
            long,
            env = "QTASK_DATA_DIR",
            default_value = "qtask-data",
            global = true
        )]
        data_dir: PathBuf,
    },
    /// Sign and send one API call, print the answer; --wait follows its tasks.
    Call(Box<call::CallArgs>),
    /// Show the effective catalog of resource types and actions, or check files.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Print the effective catalog (built-in, then each --catalog file) as TOML.
    ///
    /// Example: qtask catalog show --catalog databases.toml
    Show {
        #[arg(long = "catalog", env = "QTASK_CATALOGS", value_delimiter = ',')]
        catalogs: Vec<PathBuf>,
    },
    /// Validate catalog files on top of the built-in catalog; errors name the file,
    /// the line and the problem.
    ///
    /// Example: qtask catalog check databases.toml
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key pair (and the account if it is new).
    Create {
        #[arg(long, default_value = keys::DEFAULT_ACCOUNT)]
        account: String,
    },
    /// List keys (without their secrets).
    List,
    /// Disable a key: its requests are refused with 4104.
    Disable { secret_id: String },
    /// Enable a disabled key again.
    Enable { secret_id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    qtask::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => qtask::serve::run(ServeConfig::resolve(*args)?)
                .await
                .map(|()| 0),
            Command::Keys { command, data_dir } => match command {
                KeysCommand::Create { account } => {
                    keys::run_create(&data_dir, &account).await.map(|()| 0)
                }
                KeysCommand::List => keys::run_list(&data_dir).await.map(|()| 0),
                KeysCommand::Disable { secret_id } => {
                    keys::run_set_enabled(&data_dir, &secret_id, false)
                        .await
                        .map(|()| 0)
                }
                KeysCommand::Enable { secret_id } => {
                    keys::run_set_enabled(&data_dir, &secret_id, true)
                        .await
                        .map(|()| 0)
                }
            },
            Command::Call(args) => call::run(*args).await,
            Command::Catalog { command } => match command {
                CatalogCommand::Show { catalogs } => catalog::run_show(&catalogs).map(|()| 0),
                CatalogCommand::Check { files } => catalog::run_check(&files).map(|()| 0),
            },
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
