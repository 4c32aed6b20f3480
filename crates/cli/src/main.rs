//! The `qtask` command: the server (`serve`, `keys`, `catalog`) and its client
//! (`call`, `tasks`, `instances`, `lb`, `configure`, `completions`).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use qtask::config::{ServeArgs, ServeConfig};
use qtask::database::{self, StoreArgs};
use qtask::exit::{Exit, EXIT_CODES_HELP};
use qtask::resources::{InstancesCommand, LbCommand, ResourceArgs};
use qtask::{call, catalog, friendly, keys, profile, resources, tasks};
use std::path::PathBuf;
use std::process::ExitCode;

// jemalloc: with glibc's malloc, memory allocated on one thread and freed on another (a
// request's job, built on a runtime thread and dropped by the store writer) took arena
// locks and consolidations: a quarter of an `e2e` profile's samples (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const EXAMPLES: &str = "\
Examples:
  qtask serve                                   # HTTP :8080, HTTPS :8443, data in ./qtask-data
  qtask configure                               # save endpoint and keys as the default profile
  qtask call StopInstances --instanceIds ins-1a2b3c4d,ins-5e6f7a8b --wait
  qtask tasks ls --state FAILED
  qtask tasks watch
  qtask instances ls --output json
  qtask completions bash > /etc/bash_completion.d/qtask

Client commands connect with, in order: flags, QTASK_* variables, the profile
(--profile, QTASK_PROFILE, else \"default\") of ~/.config/qtask/config.toml, then
http://127.0.0.1:8080 with the keys of DATA_DIR/credentials.";

#[derive(Parser)]
#[command(
    name = "qtask",
    version,
    about = "A durable async task engine behind the Tencent Cloud API 2.0 protocol",
    after_help = format!("{EXAMPLES}\n\n{EXIT_CODES_HELP}")
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP and HTTPS API at /v2/index.php, workers, simulated CVM).
    #[command(
        after_help = "Examples:\n  qtask serve\n  qtask serve --data-dir /var/lib/qtask --listen 0.0.0.0:8080 --tls-listen off\n  qtask serve --config /etc/qtask/qtask.toml --sim-speed 0.1"
    )]
    Serve(Box<ServeArgs>),
    /// Manage API keys in a data directory.
    #[command(
        after_help = "Examples:\n  qtask keys create --account team-a\n  qtask keys list --data-dir /var/lib/qtask\n  qtask keys list --database postgres://qtask@db.internal/qtask\n  qtask keys disable AKID…"
    )]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Apply the store's migrations and exit (`qtask serve` also applies them at start).
    #[command(after_help = "Examples:
  qtask migrate --data-dir /var/lib/qtask
  qtask migrate --database postgres://qtask@db.internal/qtask")]
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Sign and send one API call, print its JSON answer; --wait follows its tasks.
    #[command(after_help = format!("{}\n\n{EXIT_CODES_HELP}", call::EXAMPLES))]
    Call(Box<call::CallArgs>),
    /// List, show, cancel, retry and watch tasks.
    #[command(
        after_help = format!("Examples:\n  qtask tasks ls --state FAILED\n  qtask tasks show 41\n  qtask tasks cancel 41\n  qtask tasks retry 41 --wait\n  qtask tasks watch 41\n\n{EXIT_CODES_HELP}")
    )]
    Tasks(Box<tasks::TasksArgs>),
    /// List instances.
    #[command(
        after_help = "Examples:\n  qtask instances ls\n  qtask instances ls --search web --output json"
    )]
    Instances(Box<ResourceArgs<InstancesCommand>>),
    /// List load balancers.
    #[command(after_help = "Examples:\n  qtask lb ls\n  qtask lb ls --output json")]
    Lb(Box<ResourceArgs<LbCommand>>),
    /// Write a connection profile (endpoint, keys, region, CA, method) to the
    /// configuration file, asking for each setting.
    #[command(
        after_help = "Prompts go to stderr and answers are read from stdin, one line each: an empty\nanswer keeps the value in brackets, - clears it. The file is written with mode 0600.\n\nThe file is $QTASK_CONFIG_FILE, else $XDG_CONFIG_HOME/qtask/config.toml, else\n~/.config/qtask/config.toml.\n\nExamples:\n  qtask configure\n  qtask configure --profile prod\n  printf 'https://qtask.example:8443\\nAKID…\\nsecret\\n\\n\\n\\n\\n' | qtask configure --profile ci"
    )]
    Configure {
        /// The profile to write.
        #[arg(long, env = "QTASK_PROFILE", default_value = profile::DEFAULT_PROFILE)]
        profile: String,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  qtask completions bash > ~/.local/share/bash-completion/completions/qtask\n  qtask completions zsh > ~/.zfunc/_qtask\n  qtask completions fish > ~/.config/fish/completions/qtask.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Load-test a server (throughput, latency, CPU and memory), or fill a store.
    #[command(after_help = format!("{}\n\n{EXIT_CODES_HELP}", qtask::bench::EXAMPLES))]
    Bench(Box<qtask::bench::BenchArgs>),
    /// Show the effective catalog of resource types and actions, or check files.
    #[command(
        after_help = "Examples:\n  qtask catalog show --catalog databases.toml\n  qtask catalog check databases.toml"
    )]
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Print the effective catalog (built-in, then each --catalog file) as TOML.
    #[command(after_help = "Example:\n  qtask catalog show --catalog databases.toml")]
    Show {
        #[arg(long = "catalog", env = "QTASK_CATALOGS", value_delimiter = ',')]
        catalogs: Vec<PathBuf>,
    },
    /// Validate catalog files on top of the built-in catalog; errors name the file,
    /// the line and the problem.
    #[command(after_help = "Example:\n  qtask catalog check databases.toml")]
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key pair (and the account if it is new).
    /// The account's first key is its main key (DescribeAuditLog is reserved to it).
    #[command(
        after_help = "Examples:\n  qtask keys create --account team-a\n  qtask keys create --account team-a --allow-actions DescribeInstances,StartInstances --allow-resources 'ins-*' --rate 5/10\n  qtask keys create --account team-a --read-only"
    )]
    Create {
        #[arg(long, default_value = keys::DEFAULT_ACCOUNT)]
        account: String,
        #[command(flatten)]
        restrictions: keys::Restrictions,
    },
    /// List keys (without their secrets).
    #[command(after_help = "Example:\n  qtask keys list --data-dir /var/lib/qtask")]
    List,
    /// Disable a key: its requests are refused with 4104.
    #[command(after_help = "Example:\n  qtask keys disable AKIDxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")]
    Disable { secret_id: String },
    /// Enable a disabled key again.
    #[command(after_help = "Example:\n  qtask keys enable AKIDxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")]
    Enable { secret_id: String },
    /// Block an account: every request with any of its keys answers 4300.
    #[command(after_help = "Example:\n  qtask keys block team-a")]
    Block { account: String },
    /// Unblock a blocked account.
    #[command(after_help = "Example:\n  qtask keys unblock team-a")]
    Unblock { account: String },
    /// Re-seal every SecretKey with a new master key (stop the server first).
    #[command(
        after_help = "Example:\n  head -c 32 /dev/urandom | base64 > new.key && chmod 600 new.key\n  qtask keys rotate-master --new-key-file new.key"
    )]
    RotateMaster {
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
}

/// Parses the command line; `qtask call`'s `--NAME VALUE` parameters are split off
/// first, as clap knows only qtask's own flags.
fn parse() -> Cli {
    let command = Cli::command();
    let call_command = command
        .find_subcommand("call")
        .expect("qtask has a call command")
        .clone();
    let (args, flags) = friendly::split_call_args(std::env::args_os().collect(), &call_command);
    let matches = command.get_matches_from(args);
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Command::Call(call) = &mut cli.command {
        call.flags = flags;
    }
    cli
}

fn main() -> ExitCode {
    let cli = parse();
    qtask::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        let done = |()| Exit::Success;
        match cli.command {
            Command::Serve(args) => qtask::serve::run(ServeConfig::resolve(*args)?)
                .await
                .map(done),
            Command::Keys { command, store } => match command {
                KeysCommand::Create {
                    account,
                    restrictions,
                } => keys::run_create(&store, &account, restrictions)
                    .await
                    .map(done),
                KeysCommand::List => keys::run_list(&store).await.map(done),
                KeysCommand::Disable { secret_id } => {
                    keys::run_set_enabled(&store, &secret_id, false)
                        .await
                        .map(done)
                }
                KeysCommand::Enable { secret_id } => {
                    keys::run_set_enabled(&store, &secret_id, true)
                        .await
                        .map(done)
                }
                KeysCommand::Block { account } => keys::run_set_blocked(&store, &account, true)
                    .await
                    .map(done),
                KeysCommand::Unblock { account } => keys::run_set_blocked(&store, &account, false)
                    .await
                    .map(done),
                KeysCommand::RotateMaster { new_key_file } => {
                    keys::run_rotate_master(&store, &new_key_file)
                        .await
                        .map(done)
                }
            },
            Command::Migrate { store } => {
                let version = database::migrate(&store.data_dir, &store.database).await?;
                println!("The {} is at schema version {version}.", store.describe());
                Ok(done(()))
            }
            Command::Call(args) => call::run(*args).await,
            Command::Bench(args) => qtask::bench::run(*args).await,
            Command::Tasks(args) => tasks::run(*args).await,
            Command::Instances(args) => resources::run_instances(*args).await,
            Command::Lb(args) => resources::run_lb(*args).await,
            Command::Configure { profile } => {
                profile::run_configure(&profile, &profile::process_env).map(done)
            }
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "qtask",
                    &mut std::io::stdout(),
                );
                Ok(Exit::Success)
            }
            Command::Catalog { command } => match command {
                CatalogCommand::Show { catalogs } => catalog::run_show(&catalogs).map(done),
                CatalogCommand::Check { files } => catalog::run_check(&files).map(done),
            },
        }
    });
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(Exit::of_error(&error).code())
        }
    }
}
