//! API keys as people handle them: generating a pair, and the `credentials` file
//! (`QTASK_SECRET_ID=…` and `QTASK_SECRET_KEY=…`, mode 0600) in the data directory.

use anyhow::Context;
use rand::distributions::{Alphanumeric, DistString};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "credentials";

/// A new key pair: `AKID` + 32 letters/digits, and a 32-character secret.
pub fn generate() -> (String, String) {
    let mut rng = rand::rngs::OsRng;
    let secret_id = format!("AKID{}", Alphanumeric.sample_string(&mut rng, 32));
    let secret_key = Alphanumeric.sample_string(&mut rng, 32);
    (secret_id, secret_key)
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Writes the credentials file readable by its owner only.
pub fn write(data_dir: &Path, secret_id: &str, secret_key: &str) -> anyhow::Result<PathBuf> {
    let path = path(data_dir);
    write_private(
        &path,
        &format!("QTASK_SECRET_ID={secret_id}\nQTASK_SECRET_KEY={secret_key}\n"),
    )?;
    Ok(path)
}

/// Creates `dir` (and its parents) readable by its owner only, if it does not exist.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes `text` to `path` through a temporary file renamed over it, mode 0600 (its
/// directory is created, 0700, if missing).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() && !dir.exists() {
        create_private_dir(dir)?;
    }
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // An existing temporary file keeps its mode through `open`: set it again.
    #[cfg(unix)]
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads a credentials file: `(secret_id, secret_key)`.
pub fn read(path: &Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("{} has no {key}= line", path.display()))
    };
    Ok((value("QTASK_SECRET_ID")?, value("QTASK_SECRET_KEY")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn written_credentials_read_back_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let (id, key) = super::generate();
        assert!(id.starts_with("AKID") && id.len() == 36 && key.len() == 32);
        let path = super::write(dir.path(), &id, &key).unwrap();
        assert_eq!(super::read(&path).unwrap(), (id, key));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
