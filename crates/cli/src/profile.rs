//! Connection profiles: `[profiles.NAME]` tables in `~/.config/qtask/config.toml`
//! (`$XDG_CONFIG_HOME/qtask/config.toml`, or the file `QTASK_CONFIG_FILE` names), and
//! `qtask configure`, which writes one from answers to prompts.

use crate::exit::CliError;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";
pub const DEFAULT_REGION: &str = "ap-guangzhou";

/// Reads an environment variable; empty counts as unset. Taken as a parameter so the
/// precedence rules can be tested without touching the process environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`Env`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// One `[profiles.NAME]` table. Every key is optional; what it lacks comes from the
/// defaults (or, for keys, from the data directory's `credentials`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Relative to the configuration file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `GET` or `POST`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `HmacSHA256` or `HmacSHA1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_method: Option<String>,
}

/// Where the configuration file is: `QTASK_CONFIG_FILE`, else
/// `$XDG_CONFIG_HOME/qtask/config.toml` (when absolute), else
/// `$HOME/.config/qtask/config.toml`; `None` without any of them.
pub fn config_path(env: Env<'_>) -> Option<PathBuf> {
    if let Some(file) = env("QTASK_CONFIG_FILE") {
        return Some(PathBuf::from(file));
    }
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("qtask").join("config.toml"))
}

/// The configuration file as a TOML table (empty when the file does not exist), so
/// that writing a profile keeps everything else in it.
fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(toml::Table::new()),
        Err(e) => {
            return Err(CliError::usage(format!("cannot read {}: {e}", path.display())).into())
        }
    };
    text.parse::<toml::Table>()
        .map_err(|e| CliError::usage(format!("{} is not valid TOML: {e}", path.display())).into())
}

/// The profile `name` of the file at `path`, if the file and the profile exist.
pub fn load(path: &Path, name: &str) -> anyhow::Result<Option<Profile>> {
    let table = read_table(path)?;
    let Some(profile) = table
        .get("profiles")
        .and_then(toml::Value::as_table)
        .and_then(|profiles| profiles.get(name))
    else {
        return Ok(None);
    };
    let profile = profile.clone().try_into::<Profile>().map_err(|e| {
        CliError::usage(format!(
            "{}: [profiles.{name}] is invalid: {e}",
            path.display()
        ))
    })?;
    Ok(Some(
        profile.relative_to(path.parent().unwrap_or(Path::new(""))),
    ))
}

impl Profile {
    /// The profile with its CA path made relative to `dir` (where the file is).
    fn relative_to(mut self, dir: &Path) -> Self {
        if let Some(ca) = &self.ca_file {
            if ca.is_relative() {
                self.ca_file = Some(dir.join(ca));
            }
        }
        self
    }
}

/// Writes `profile` as `[profiles.NAME]` into the file at `path`, keeping the other
/// profiles and keys; the file is readable by its owner only (it holds a SecretKey).
pub fn save(path: &Path, name: &str, profile: &Profile) -> anyhow::Result<()> {
    let mut table = read_table(path)?;
    let profiles = table
        .entry("profiles")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let profiles = profiles
        .as_table_mut()
        .with_context(|| format!("{}: `profiles` is not a table", path.display()))?;
    profiles.insert(
        name.to_owned(),
        toml::Value::try_from(profile).context("cannot encode the profile")?,
    );
    let text = toml::to_string(&table).context("cannot encode the configuration")?;
    crate::credentials::write_private(path, &text)
}

/// `qtask configure`: asks for each setting of the profile `name` (prompts on stderr,
/// answers from stdin, one line each; an empty answer keeps the value shown in
/// brackets, `-` clears it) and saves the profile.
pub fn run_configure(name: &str, env: Env<'_>) -> anyhow::Result<()> {
    let path = config_path(env).ok_or_else(|| {
        CliError::usage(
            "no place for the configuration: set HOME, XDG_CONFIG_HOME or QTASK_CONFIG_FILE",
        )
    })?;
    let current = load(&path, name)?.unwrap_or_default();
    let stdin = std::io::stdin();
    let mut prompts = Prompts {
        input: stdin.lock(),
        output: std::io::stderr(),
    };
    let profile = ask_profile(&mut prompts, &current)?;
    save(&path, name, &profile)?;
    eprintln!(
        "Saved profile \"{name}\" to {} (mode 0600).",
        path.display()
    );
    Ok(())
}

/// Reads answers line by line; end of input counts as an empty answer.
pub struct Prompts<R, W> {
    pub input: R,
    pub output: W,
}

impl<R: BufRead, W: Write> Prompts<R, W> {
    /// Asks `question`; `None` for an empty answer.
    fn ask(&mut self, question: &str, shown: Option<&str>) -> anyhow::Result<Option<String>> {
        match shown {
            Some(shown) => write!(self.output, "{question} [{shown}]: ")?,
            None => write!(self.output, "{question}: ")?,
        }
        self.output.flush()?;
        let mut line = String::new();
        let read = self.input.read_line(&mut line)?;
        if read == 0 {
            // Piped input ran out: keep what is shown, on a line of its own.
            writeln!(self.output)?;
        }
        let answer = line.trim();
        Ok((!answer.is_empty()).then(|| answer.to_owned()))
    }

    /// Asks until the answer passes `check` (or is empty: the current value stays).
    fn ask_setting(
        &mut self,
        question: &str,
        current: Option<String>,
        shown: Option<String>,
        check: impl Fn(&str) -> Result<String, String>,
    ) -> anyhow::Result<Option<String>> {
        loop {
            let shown = shown.as_deref().or(current.as_deref());
            match self.ask(question, shown)? {
                None => return Ok(current),
                Some(answer) if answer == "-" => return Ok(None),
                Some(answer) => match check(&answer) {
                    Ok(value) => return Ok(Some(value)),
                    Err(problem) => writeln!(self.output, "  {problem}")?,
                },
            }
        }
    }
}

/// Asks for every setting, starting from `current` (defaults fill what it lacks).
pub fn ask_profile<R: BufRead, W: Write>(
    prompts: &mut Prompts<R, W>,
    current: &Profile,
) -> anyhow::Result<Profile> {
    let any = |text: &str| Ok(text.to_owned());
    let endpoint = prompts.ask_setting(
        "Endpoint",
        current
            .endpoint
            .clone()
            .or_else(|| Some(DEFAULT_ENDPOINT.into())),
        None,
        |text| {
            url::Url::parse(text)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                .map(|_| text.to_owned())
                .ok_or_else(|| format!("{text:?} is not an http:// or https:// URL"))
        },
    )?;
    let secret_id = prompts.ask_setting("SecretId", current.secret_id.clone(), None, any)?;
    // The key is shown masked, as people read prompts over each other's shoulders.
    let masked = current.secret_key.as_deref().map(mask);
    let secret_key = prompts.ask_setting("SecretKey", current.secret_key.clone(), masked, any)?;
    let region = prompts.ask_setting(
        "Region",
        current
            .region
            .clone()
            .or_else(|| Some(DEFAULT_REGION.into())),
        None,
        any,
    )?;
    let ca_file = prompts
        .ask_setting(
            "CA certificate file for https (- for none)",
            current.ca_file.as_ref().map(|p| p.display().to_string()),
            None,
            |text| {
                let path = Path::new(text);
                if path.is_file() {
                    Ok(std::path::absolute(path)
                        .unwrap_or_else(|_| path.to_owned())
                        .display()
                        .to_string())
                } else {
                    Err(format!("{text} is not a file"))
                }
            },
        )?
        .map(PathBuf::from);
    let method = prompts.ask_setting(
        "HTTP method (GET or POST)",
        current.method.clone().or_else(|| Some("GET".into())),
        None,
        |text| parse_method(text).map(|m| m.as_str().to_owned()),
    )?;
    let signature_method = prompts.ask_setting(
        "Signature method (HmacSHA256 or HmacSHA1)",
        current
            .signature_method
            .clone()
            .or_else(|| Some("HmacSHA256".into())),
        None,
        |text| parse_signature_method(text).map(|m| m.as_str().to_owned()),
    )?;
    Ok(Profile {
        endpoint,
        secret_id,
        secret_key,
        region,
        ca_file,
        method,
        signature_method,
    })
}

/// `GET` or `POST`, in any case.
pub fn parse_method(text: &str) -> Result<qtask_protocol::HttpMethod, String> {
    match text.to_ascii_uppercase().as_str() {
        "GET" => Ok(qtask_protocol::HttpMethod::Get),
        "POST" => Ok(qtask_protocol::HttpMethod::Post),
        _ => Err(format!("method must be GET or POST, not {text:?}")),
    }
}

/// `HmacSHA256` or `HmacSHA1`, in any case.
pub fn parse_signature_method(text: &str) -> Result<qtask_protocol::SignatureMethod, String> {
    match text.to_ascii_lowercase().as_str() {
        "hmacsha256" => Ok(qtask_protocol::SignatureMethod::HmacSha256),
        "hmacsha1" => Ok(qtask_protocol::SignatureMethod::HmacSha1),
        _ => Err(format!(
            "signature method must be HmacSHA256 or HmacSHA1, not {text:?}"
        )),
    }
}

/// `****` and the last four characters.
fn mask(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_file_is_found_by_override_then_xdg_then_home() {
        let all = env_of(&[
            ("QTASK_CONFIG_FILE", "/tmp/q.toml"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("HOME", "/home/a"),
        ]);
        assert_eq!(config_path(&all), Some(PathBuf::from("/tmp/q.toml")));
        let xdg = env_of(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/a")]);
        assert_eq!(
            config_path(&xdg),
            Some(PathBuf::from("/xdg/qtask/config.toml"))
        );
        let relative_xdg = env_of(&[("XDG_CONFIG_HOME", "xdg"), ("HOME", "/home/a")]);
        assert_eq!(
            config_path(&relative_xdg),
            Some(PathBuf::from("/home/a/.config/qtask/config.toml"))
        );
        assert_eq!(config_path(&env_of(&[])), None);
    }

    #[test]
    fn saving_keeps_other_profiles_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.toml");
        let prod = Profile {
            endpoint: Some("https://prod:8443".into()),
            ca_file: Some("ca.crt".into()),
            ..Profile::default()
        };
        save(&path, "prod", &prod).unwrap();
        let dev = Profile {
            secret_id: Some("AKIDdev".into()),
            secret_key: Some("devkey".into()),
            ..Profile::default()
        };
        save(&path, "dev", &dev).unwrap();
        let loaded = load(&path, "prod").unwrap().unwrap();
        assert_eq!(loaded.endpoint, prod.endpoint);
        // A relative CA path is relative to the file.
        assert_eq!(loaded.ca_file, Some(dir.path().join("sub").join("ca.crt")));
        assert_eq!(load(&path, "dev").unwrap(), Some(dev));
        assert_eq!(load(&path, "missing").unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[profiles.default]\nsecretid = \"x\"\n").unwrap();
        let error = load(&path, "default").unwrap_err().to_string();
        assert!(
            error.contains("config.toml") && error.contains("secretid"),
            "{error}"
        );
    }

    #[test]
    fn prompts_keep_current_values_reask_bad_ones_and_clear_with_a_dash() {
        let current = Profile {
            endpoint: Some("http://old:1".into()),
            secret_id: Some("AKIDold".into()),
            secret_key: Some("oldsecretkey".into()),
            region: Some("ap-beijing".into()),
            ..Profile::default()
        };
        let input = "ftp://nope\nhttps://new:8443\n\nnewkey\n-\n\npost\n";
        let mut prompts = Prompts {
            input: input.as_bytes(),
            output: Vec::new(),
        };
        let profile = ask_profile(&mut prompts, &current).unwrap();
        let shown = String::from_utf8(prompts.output).unwrap();
        assert!(shown.contains("not an http:// or https:// URL"), "{shown}");
        assert!(shown.contains("SecretKey [****tkey]"), "{shown}");
        assert!(!shown.contains("oldsecretkey"), "{shown}");
        assert_eq!(
            profile,
            Profile {
                endpoint: Some("https://new:8443".into()),
                secret_id: Some("AKIDold".into()),
                secret_key: Some("newkey".into()),
                region: None,
                ca_file: None,
                method: Some("POST".into()),
                // Input ran out: the default stays.
                signature_method: Some("HmacSHA256".into()),
            }
        );
    }
}
