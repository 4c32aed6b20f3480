//! `qtask serve` configuration: defaults, then an optional TOML file, then `QTASK_*`
//! environment variables, then flags — each later source overriding the earlier.
//! Every option has one flag, one variable and one file key (the flag's name with `_`).

use crate::logging::LogFormat;
use anyhow::{bail, Context};
use qtask_engine::catalog::file::PolicyFile;
use qtask_engine::maintenance::RetentionSettings;
use qtask_store::{AccountLimits, RequestRate};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The options of `qtask serve`: one struct is both the flags (with their environment
/// variables) and the configuration file's keys, so the two cannot drift apart.
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// A TOML file with any of the options below (keys are the flag names with `_`).
    #[arg(long, env = "QTASK_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where the database, TLS files and credentials live [default: ./qtask-data].
    #[arg(long, env = "QTASK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The store: `sqlite` (DATA_DIR/qtask.db, one node) or a postgres:// URL that
    /// several nodes share [default: sqlite].
    #[arg(long, env = "QTASK_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// Plain HTTP listen address, or `off` [default: 127.0.0.1:8080].
    #[arg(long, env = "QTASK_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// HTTPS listen address, or `off` [default: 127.0.0.1:8443].
    #[arg(long, env = "QTASK_TLS_LISTEN", value_name = "ADDR")]
    pub tls_listen: Option<String>,
    /// PEM certificate chain for HTTPS; without it qtask generates a private CA and a
    /// server certificate in DATA_DIR/tls.
    #[arg(
        long,
        env = "QTASK_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "QTASK_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Extra DNS name or IP address for the generated certificate (repeatable).
    #[arg(
        long = "tls-name",
        env = "QTASK_TLS_NAMES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// Multiplies simulated task durations; 0 finishes tasks at once [default: 1].
    #[arg(long, env = "QTASK_SIM_SPEED", value_name = "FACTOR")]
    pub sim_speed: Option<f64>,
    /// How many tasks run at the same time; 0 = workers off: calls are accepted and
    /// their tasks committed, but none runs (for benchmarks of acceptance) [default: 64].
    #[arg(long, env = "QTASK_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Largest accepted distance, in seconds, between a request's Timestamp and the
    /// server's clock; nonces are remembered as long [default: 300].
    #[arg(long, env = "QTASK_TIMESTAMP_WINDOW", value_name = "SECONDS")]
    pub timestamp_window: Option<u64>,
    /// A `host[:port]` clients may sign besides the Host they send, for a server behind
    /// a proxy that rewrites Host (repeatable).
    #[arg(
        long = "public-name",
        env = "QTASK_PUBLIC_NAMES",
        value_name = "HOST",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub public_names: Vec<String>,
    /// Seconds running tasks get to finish at shutdown before they are left to the next
    /// start [default: 10].
    #[arg(long, env = "QTASK_SHUTDOWN_GRACE", value_name = "SECONDS")]
    pub shutdown_grace: Option<u64>,
    /// How long a task's lease lasts without renewal; a task whose worker stalled is
    /// rescued within 1.25 × this [default: 30s].
    #[arg(long, env = "QTASK_LEASE", value_name = "DURATION")]
    pub lease: Option<String>,
    /// How long finished tasks are kept before retention deletes them [default: 7d].
    #[arg(long, env = "QTASK_TASK_RETENTION", value_name = "DURATION")]
    pub task_retention: Option<String>,
    /// How long a returned instance stays listed before retention deletes it
    /// [default: 1h].
    #[arg(long, env = "QTASK_RETIRED_RETENTION", value_name = "DURATION")]
    pub retired_retention: Option<String>,
    /// How often retention runs [default: 60s].
    #[arg(long, env = "QTASK_RETENTION_INTERVAL", value_name = "DURATION")]
    pub retention_interval: Option<String>,
    /// Appends every simulated attempt's start and end to FILE (for the crash test).
    #[arg(long, env = "QTASK_SIM_JOURNAL", value_name = "FILE", hide = true)]
    pub sim_journal: Option<PathBuf>,
    /// Per-action failure probability of the simulator (file only):
    /// `[sim_failure_rates]` then `StopInstances = 0.1`.
    #[arg(skip)]
    #[serde(default)]
    pub sim_failure_rates: HashMap<String, f64>,
    /// Per-action engine policy (file only): `[actions.StartInstances]` then any of
    /// `max_attempts = 5`, `timeout = "2m"`, `backoff = "500ms"`, `backoff_max = "1m"`,
    /// `on_busy = "queue"` (or `"refuse"`).
    #[arg(skip)]
    #[serde(default)]
    pub actions: HashMap<String, PolicyFile>,
    /// A catalog file of resource types and actions to add or override (repeatable;
    /// later files win).
    #[arg(
        long = "catalog",
        env = "QTASK_CATALOGS",
        value_name = "FILE",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub catalogs: Vec<PathBuf>,
    /// Log lines on stderr as `text` or `json` (one object per line); QTASK_LOG sets
    /// what is logged (default `info`) [default: text].
    #[arg(long, env = "QTASK_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics at /metrics, on the API's listeners: `on` or `off`
    /// [default: on].
    #[arg(long, env = "QTASK_METRICS", value_name = "SWITCH")]
    pub metrics: Option<Switch>,
    /// Connections served at once; more are closed at once [default: 1024].
    #[arg(long, env = "QTASK_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long a client may take to send a request's head, or its body; slower
    /// clients are cut off [default: 10s].
    #[arg(long, env = "QTASK_CLIENT_TIMEOUT", value_name = "DURATION")]
    pub client_timeout: Option<String>,
    /// Requests per second each SecretId may make, `N` or `N/BURST`, for keys without
    /// their own rate; `0` = unlimited [default: 0].
    #[arg(long, env = "QTASK_RATE_LIMIT", value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// Unfinished (queued or running) tasks an account may have; 0 = unlimited
    /// [default: 0].
    #[arg(long, env = "QTASK_MAX_UNFINISHED_TASKS", value_name = "N")]
    pub max_unfinished_tasks: Option<u64>,
    /// Resources an account may have; 0 = unlimited [default: 0].
    #[arg(long, env = "QTASK_MAX_RESOURCES", value_name = "N")]
    pub max_resources: Option<u64>,
    /// The master key that seals SecretKeys at rest: a file (mode 0600) holding 32
    /// base64 bytes; without it, QTASK_MASTER_KEY, else DATA_DIR/master.key (generated
    /// on first start).
    #[arg(long, env = "QTASK_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
}

/// An option that is `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

fn positive_duration(option: &str, text: &str) -> anyhow::Result<Duration> {
    let value = qtask_engine::catalog::file::duration(option, text).map_err(anyhow::Error::msg)?;
    if value.is_zero() {
        bail!("{option} must be longer than 0");
    }
    Ok(value)
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub database: crate::database::Database,
    pub listen: Option<SocketAddr>,
    pub tls_listen: Option<SocketAddr>,
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub tls_names: Vec<String>,
    pub sim_speed: f64,
    pub sim_failure_rates: HashMap<String, f64>,
    pub workers: usize,
    pub timestamp_window: Duration,
    pub public_names: Vec<String>,
    pub shutdown_grace: Duration,
    pub lease: Duration,
    pub retention: RetentionSettings,
    pub sim_journal: Option<PathBuf>,
    pub actions: HashMap<String, PolicyFile>,
    pub catalogs: Vec<PathBuf>,
    pub log_format: LogFormat,
    /// Whether /metrics is served.
    pub metrics: bool,
    pub http_limits: qtask_server::HttpLimits,
    /// The request rate of keys without their own; `None` = unlimited.
    pub rate_limit: Option<RequestRate>,
    pub account_limits: AccountLimits,
    pub master_key_file: Option<PathBuf>,
}

impl ServeConfig {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let tls_listen = args
            .tls_listen
            .or(file.tls_listen)
            .unwrap_or_else(|| "127.0.0.1:8443".into());
        let tls_files = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("tls_cert and tls_key go together: give both or neither"),
        };
        let sim_speed = args.sim_speed.or(file.sim_speed).unwrap_or(1.0);
        if !sim_speed.is_finite() || sim_speed < 0.0 {
            bail!("sim_speed must be a number ≥ 0, not {sim_speed}");
        }
        let sim_failure_rates = file.sim_failure_rates;
        for (action, rate) in &sim_failure_rates {
            if !(0.0..=1.0).contains(rate) {
                bail!("sim_failure_rates.{action} must be between 0 and 1, not {rate}");
            }
        }
        let workers = args.workers.or(file.workers).unwrap_or(64);
        let timestamp_window = args
            .timestamp_window
            .or(file.timestamp_window)
            .unwrap_or(300);
        if timestamp_window == 0 {
            bail!("timestamp_window must be at least 1 second");
        }
        let or_file =
            |flags: Vec<String>, file: Vec<String>| if flags.is_empty() { file } else { flags };
        let duration_or =
            |option: &str, flag: Option<String>, file: Option<String>, default: &str| {
                positive_duration(option, &flag.or(file).unwrap_or_else(|| default.to_owned()))
            };
        let lease = duration_or("lease", args.lease, file.lease, "30s")?;
        let retention = RetentionSettings {
            tasks: duration_or(
                "task_retention",
                args.task_retention,
                file.task_retention,
                "7d",
            )?,
            retired_resources: duration_or(
                "retired_retention",
                args.retired_retention,
                file.retired_retention,
                "1h",
            )?,
            interval: duration_or(
                "retention_interval",
                args.retention_interval,
                file.retention_interval,
                "60s",
            )?,
            ..RetentionSettings::default()
        };
        let rate_limit = match args.rate_limit.or(file.rate_limit).as_deref() {
            None | Some("0") => None,
            Some(text) => Some(
                text.parse::<RequestRate>()
                    .map_err(|e| anyhow::anyhow!("rate_limit: {e}"))?,
            ),
        };
        let account_limits = AccountLimits {
            max_unfinished_tasks: args
                .max_unfinished_tasks
                .or(file.max_unfinished_tasks)
                .unwrap_or(0),
            max_resources: args.max_resources.or(file.max_resources).unwrap_or(0),
        };
        Ok(Self {
            rate_limit,
            account_limits,
            master_key_file: args.master_key_file.or(file.master_key_file),
            database: match args.database.or(file.database) {
                Some(text) => text.parse()?,
                None => Default::default(),
            },
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("qtask-data")),
            listen: parse_listen("listen", &listen)?,
            tls_listen: parse_listen("tls_listen", &tls_listen)?,
            tls_files,
            tls_names: or_file(args.tls_names, file.tls_names),
            sim_speed,
            sim_failure_rates,
            workers,
            timestamp_window: Duration::from_secs(timestamp_window),
            public_names: or_file(args.public_names, file.public_names),
            shutdown_grace: Duration::from_secs(
                args.shutdown_grace.or(file.shutdown_grace).unwrap_or(10),
            ),
            lease,
            retention,
            sim_journal: args.sim_journal.or(file.sim_journal),
            actions: file.actions,
            catalogs: if args.catalogs.is_empty() {
                file.catalogs
            } else {
                args.catalogs
            },
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            metrics: args.metrics.or(file.metrics) != Some(Switch::Off),
            http_limits: qtask_server::HttpLimits {
                max_connections: match args.max_connections.or(file.max_connections) {
                    Some(0) => bail!("max_connections must be at least 1"),
                    Some(n) => n,
                    None => qtask_server::HttpLimits::default().max_connections,
                },
                client_timeout: duration_or(
                    "client_timeout",
                    args.client_timeout,
                    file.client_timeout,
                    "10s",
                )?,
            },
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn parse_listen(option: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).with_context(|| {
        format!("{option} must be an address such as 127.0.0.1:8080 (or off), not {value:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("qtask.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nworkers = 8\nsim_speed = 0.5\n[sim_failure_rates]\nStopInstances = 0.25\n",
        )
        .unwrap();
        let config = ServeConfig::resolve(ServeArgs {
            config: Some(file),
            workers: Some(3),
            tls_listen: Some("off".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(config.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(config.tls_listen, None);
        assert_eq!(config.workers, 3);
        assert_eq!(config.sim_speed, 0.5);
        assert_eq!(config.sim_failure_rates["StopInstances"], 0.25);
        assert_eq!(config.data_dir, PathBuf::from("qtask-data"));
        assert_eq!(config.timestamp_window, Duration::from_secs(300));
        assert_eq!(config.lease, Duration::from_secs(30));
        assert_eq!(config.retention.tasks, Duration::from_secs(7 * 24 * 3600));
    }

    use qtask_engine::policy::Policy;
    use qtask_store::OnBusy;

    #[test]
    fn action_policies_and_durations_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("qtask.toml");
        std::fs::write(
            &file,
            "lease = \"2s\"\ntask_retention = \"90m\"\n[actions.StartInstances]\nmax_attempts = 5\ntimeout = \"250ms\"\non_busy = \"queue\"\n",
        )
        .unwrap();
        let config = ServeConfig::resolve(ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(config.lease, Duration::from_secs(2));
        assert_eq!(config.retention.tasks, Duration::from_secs(90 * 60));
        let policy = config.actions["StartInstances"]
            .apply(Policy::default())
            .unwrap();
        assert_eq!(policy.max_attempts, 5);
        assert_eq!(policy.timeout, Duration::from_millis(250));
        assert_eq!(policy.on_busy, OnBusy::Queue);
        assert_eq!(policy.backoff, Policy::default().backoff);

        let error = PolicyFile {
            timeout: Some("soon".into()),
            ..PolicyFile::default()
        }
        .apply(Policy::default())
        .unwrap_err();
        assert!(error.contains("timeout must be a duration"), "{error}");
        let error = ServeConfig::resolve(ServeArgs {
            lease: Some("0s".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("lease must be longer"),
            "{error}"
        );
    }

    #[test]
    fn log_format_and_metrics_come_from_the_file_unless_a_flag_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("qtask.toml");
        std::fs::write(&file, "log_format = \"json\"\nmetrics = \"off\"\n").unwrap();
        let from_file = ServeConfig::resolve(ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            (from_file.log_format, from_file.metrics),
            (LogFormat::Json, false)
        );
        let flags = ServeConfig::resolve(ServeArgs {
            config: Some(file),
            log_format: Some(LogFormat::Text),
            metrics: Some(Switch::On),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!((flags.log_format, flags.metrics), (LogFormat::Text, true));
        let defaults = ServeConfig::resolve(ServeArgs::default()).unwrap();
        assert_eq!(
            (defaults.log_format, defaults.metrics),
            (LogFormat::Text, true)
        );
    }

    #[test]
    fn the_reference_lists_every_option_with_its_variable_and_file_key() {
        let reference = include_str!("../../../docs/reference.md");
        let serve = reference
            .split("## Client commands")
            .next()
            .expect("the reference has a serve section");
        let command = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
        let mut missing = Vec::new();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else {
                continue;
            };
            let mut names = vec![format!("`--{long}")];
            names.extend(
                arg.get_env()
                    .map(|env| format!("`{}`", env.to_string_lossy())),
            );
            if arg.get_id() != "config" {
                names.push(format!("`{}`", arg.get_id()));
            }
            missing.extend(
                names
                    .into_iter()
                    .filter(|name| !serve.contains(name.as_str())),
            );
        }
        for file_only in ["`sim_failure_rates`", "`actions.NAME`"] {
            if !serve.contains(file_only) {
                missing.push(file_only.to_owned());
            }
        }
        assert!(
            missing.is_empty(),
            "docs/reference.md does not mention {missing:?}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("qtask.toml");
        std::fs::write(&file, "listn = \"x\"\n").unwrap();
        let error = ServeConfig::resolve(ServeArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `listn`"),
            "{error:#}"
        );
        let error = ServeConfig::resolve(ServeArgs {
            listen: Some("nowhere".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("listen must be an address"),
            "{error}"
        );
        let error = ServeConfig::resolve(ServeArgs {
            sim_speed: Some(-1.0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("sim_speed"), "{error}");
    }
}
