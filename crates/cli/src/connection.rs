//! Where and how client commands connect: flags, then environment variables, then the
//! profile, then the defaults (keys from the data directory's `credentials`).

use crate::client::{Client, ClientConfig};
use crate::credentials;
use crate::exit::CliError;
use crate::profile::{self, Env, Profile, DEFAULT_ENDPOINT, DEFAULT_PROFILE, DEFAULT_REGION};
use qtask_protocol::signature::{HttpMethod, SignatureMethod};
use std::path::PathBuf;

/// The connection flags every client command takes.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// The profile of the configuration file to use [env: QTASK_PROFILE] [default: default].
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// The server [env: QTASK_ENDPOINT] [default: the profile's, else http://127.0.0.1:8080].
    #[arg(long, global = true)]
    pub endpoint: Option<String>,
    /// The key's SecretId; give --secret-key with it [env: QTASK_SECRET_ID].
    #[arg(long, global = true)]
    pub secret_id: Option<String>,
    /// The key's SecretKey [env: QTASK_SECRET_KEY].
    #[arg(long, global = true)]
    pub secret_key: Option<String>,
    /// The region calls are signed for [env: QTASK_REGION] [default: ap-guangzhou].
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// A CA certificate to trust for https endpoints [env: QTASK_CA_FILE]
    /// [default: the profile's, else DATA_DIR/tls/ca.crt if present].
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// Where to find `credentials` (and `tls/ca.crt`) when no keys are configured
    /// [env: QTASK_DATA_DIR] [default: qtask-data].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Send calls as POST (form body) instead of GET.
    #[arg(long, global = true)]
    pub post: bool,
    /// Sign with HmacSHA1 instead of HmacSHA256.
    #[arg(long, global = true)]
    pub sha1: bool,
}

impl ConnectionArgs {
    /// A client for the resolved settings.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.resolve(&profile::process_env)?)?)
    }

    /// The settings, each from the first place that has it: flag, environment
    /// variable, profile, default. Keys go as a pair: the first place with either key
    /// must have both (so a SecretId is never signed with another pair's SecretKey).
    pub fn resolve(&self, env: Env<'_>) -> anyhow::Result<ClientConfig> {
        let named = self.profile.clone().or_else(|| env("QTASK_PROFILE"));
        let profile = self.load_profile(named.as_deref(), env)?;
        let data_dir = self
            .data_dir
            .clone()
            .or_else(|| env("QTASK_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("qtask-data"));
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| env("QTASK_ENDPOINT"))
            .or_else(|| profile.endpoint.clone())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let region = self
            .region
            .clone()
            .or_else(|| env("QTASK_REGION"))
            .or_else(|| profile.region.clone())
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let (secret_id, secret_key) = self.keys(&profile, &data_dir, env)?;
        let default_ca = data_dir.join("tls").join("ca.crt");
        let ca_file = self
            .ca_file
            .clone()
            .or_else(|| env("QTASK_CA_FILE").map(PathBuf::from))
            .or_else(|| profile.ca_file.clone())
            .or_else(|| {
                (endpoint.starts_with("https:") && default_ca.exists()).then_some(default_ca)
            });
        let method = match (&profile.method, self.post) {
            (_, true) => HttpMethod::Post,
            (Some(text), false) => profile::parse_method(text).map_err(CliError::usage)?,
            (None, false) => HttpMethod::Get,
        };
        let signature_method = match (&profile.signature_method, self.sha1) {
            (_, true) => SignatureMethod::HmacSha1,
            (Some(text), false) => {
                profile::parse_signature_method(text).map_err(CliError::usage)?
            }
            (None, false) => SignatureMethod::HmacSha256,
        };
        Ok(ClientConfig {
            endpoint,
            secret_id,
            secret_key,
            region,
            method,
            signature_method,
            ca_file,
        })
    }

    /// The named profile (an error if it was named and is missing), or `default` if it
    /// exists, or an empty profile.
    fn load_profile(&self, named: Option<&str>, env: Env<'_>) -> anyhow::Result<Profile> {
        let name = named.unwrap_or(DEFAULT_PROFILE);
        let Some(path) = profile::config_path(env) else {
            return match named {
                Some(name) => Err(CliError::usage(format!(
                    "no profile {name:?}: there is no configuration file (set HOME or QTASK_CONFIG_FILE)"
                ))
                .into()),
                None => Ok(Profile::default()),
            };
        };
        match (profile::load(&path, name)?, named) {
            (Some(profile), _) => Ok(profile),
            (None, None) => Ok(Profile::default()),
            (None, Some(name)) => Err(CliError::usage(format!(
                "no profile {name:?} in {}; create it with: qtask configure --profile {name}",
                path.display()
            ))
            .into()),
        }
    }

    fn keys(
        &self,
        profile: &Profile,
        data_dir: &std::path::Path,
        env: Env<'_>,
    ) -> anyhow::Result<(String, String)> {
        let layers = [
            (
                "the flags --secret-id and --secret-key",
                self.secret_id.clone(),
                self.secret_key.clone(),
            ),
            (
                "QTASK_SECRET_ID and QTASK_SECRET_KEY",
                env("QTASK_SECRET_ID"),
                env("QTASK_SECRET_KEY"),
            ),
            (
                "the profile's secret_id and secret_key",
                profile.secret_id.clone(),
                profile.secret_key.clone(),
            ),
        ];
        for (place, id, key) in layers {
            match (id, key) {
                (Some(id), Some(key)) => return Ok((id, key)),
                (None, None) => continue,
                _ => {
                    return Err(CliError::usage(format!(
                    "give both a SecretId and a SecretKey, or neither: {place} must come together"
                ))
                    .into())
                }
            }
        }
        let path = credentials::path(data_dir);
        credentials::read(&path).map_err(|e| {
            CliError::usage(format!(
                "no keys given: pass --secret-id and --secret-key, set QTASK_SECRET_ID and \
                 QTASK_SECRET_KEY, write a profile with `qtask configure`, or point --data-dir \
                 at a server's data directory ({e:#})"
            ))
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn config_with(profiles: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, profiles).unwrap();
        let path = path.display().to_string();
        (dir, path)
    }

    const PROFILES: &str = r#"
[profiles.default]
endpoint = "http://profile:1"
secret_id = "AKIDprofile"
secret_key = "profilekey"
region = "ap-profile"
method = "post"
signature_method = "HmacSHA1"

[profiles.other]
endpoint = "http://other:2"
"#;

    #[test]
    fn flags_beat_the_environment_which_beats_the_profile() {
        let (_dir, path) = config_with(PROFILES);
        let args = ConnectionArgs {
            endpoint: Some("http://flag:3".into()),
            ..ConnectionArgs::default()
        };
        let env = env_of(vec![
            ("QTASK_CONFIG_FILE", path),
            ("QTASK_ENDPOINT", "http://env:4".into()),
            ("QTASK_REGION", "ap-env".into()),
            ("QTASK_SECRET_ID", "AKIDenv".into()),
            ("QTASK_SECRET_KEY", "envkey".into()),
        ]);
        let config = args.resolve(&env).unwrap();
        assert_eq!(config.endpoint, "http://flag:3");
        assert_eq!(config.region, "ap-env");
        assert_eq!(
            (config.secret_id.as_str(), config.secret_key.as_str()),
            ("AKIDenv", "envkey")
        );
        assert_eq!(config.method, HttpMethod::Post);
        assert_eq!(config.signature_method, SignatureMethod::HmacSha1);
    }

    #[test]
    fn a_named_profile_must_exist_and_the_default_may_not() {
        let (_dir, path) = config_with(PROFILES);
        let env = env_of(vec![
            ("QTASK_CONFIG_FILE", path.clone()),
            ("QTASK_PROFILE", "other".into()),
            ("QTASK_SECRET_ID", "AKIDenv".into()),
            ("QTASK_SECRET_KEY", "envkey".into()),
        ]);
        let config = ConnectionArgs::default().resolve(&env).unwrap();
        assert_eq!(config.endpoint, "http://other:2");
        assert_eq!(config.region, DEFAULT_REGION);
        assert_eq!(config.method, HttpMethod::Get);

        let missing = ConnectionArgs {
            profile: Some("nope".into()),
            ..ConnectionArgs::default()
        };
        let error = missing.resolve(&env).unwrap_err().to_string();
        assert!(error.contains("qtask configure --profile nope"), "{error}");

        let empty = config_with("");
        let env = env_of(vec![
            ("QTASK_CONFIG_FILE", empty.1.clone()),
            ("QTASK_SECRET_ID", "AKIDenv".into()),
            ("QTASK_SECRET_KEY", "envkey".into()),
        ]);
        let config = ConnectionArgs::default().resolve(&env).unwrap();
        assert_eq!(config.endpoint, DEFAULT_ENDPOINT);
    }

    #[test]
    fn keys_come_as_a_pair_from_one_place() {
        let (_dir, path) = config_with(PROFILES);
        let half = ConnectionArgs {
            secret_id: Some("AKIDflag".into()),
            ..ConnectionArgs::default()
        };
        let env = env_of(vec![
            ("QTASK_CONFIG_FILE", path.clone()),
            ("QTASK_SECRET_KEY", "envkey".into()),
        ]);
        let error = half.resolve(&env).unwrap_err().to_string();
        assert!(error.contains("--secret-id and --secret-key"), "{error}");

        let env = env_of(vec![("QTASK_CONFIG_FILE", path)]);
        let config = ConnectionArgs::default().resolve(&env).unwrap();
        assert_eq!(config.secret_id, "AKIDprofile");
    }
}
