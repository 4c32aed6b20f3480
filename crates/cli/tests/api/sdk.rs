//! The real legacy Python SDK (`qcloudapi-sdk-python` 2.0.15) against the server over
//! HTTPS: `tests/sdk/sdk_e2e.py` runs the instance life cycle with GET and POST and both
//! signature methods. `scripts/test` prepares the interpreter (`.venv`) it needs.

use crate::helpers::TestApp;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the whole script may take (each of its calls and tasks has its own bound).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The interpreter with the SDK installed: `QTASK_SDK_PYTHON`, else `.venv/bin/python`.
/// Fails (never skips) when there is none.
fn sdk_python(root: &Path) -> PathBuf {
    let (python, origin) = match std::env::var_os("QTASK_SDK_PYTHON") {
        Some(path) => (PathBuf::from(path), "QTASK_SDK_PYTHON"),
        None => (root.join(".venv/bin/python"), "the workspace's .venv"),
    };
    let hint = "run scripts/test, which creates .venv with qcloudapi-sdk-python==2.0.15 \
                and sets QTASK_SDK_PYTHON";
    assert!(
        python.exists(),
        "no Python for the SDK test: {} (from {origin}) does not exist; {hint}",
        python.display()
    );
    let probe = Command::new(&python)
        .args(["-c", "import QcloudApi"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {hint}", python.display()));
    assert!(
        probe.status.success(),
        "{} (from {origin}) cannot import QcloudApi: {}; {hint}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

#[tokio::test]
async fn the_legacy_python_sdk_passes_its_end_to_end_script_over_https() {
    let root = workspace_root();
    let python = sdk_python(&root);
    let script = root.join("tests/sdk/sdk_e2e.py");
    assert!(script.exists(), "{} is missing", script.display());
    let app = TestApp::spawn().await;

    // The script's output goes to a file, so a full pipe can never block it.
    let out_dir = tempfile::tempdir().expect("a temporary directory");
    let out_path = out_dir.path().join("sdk_e2e.out");
    let out = std::fs::File::create(&out_path).expect("an output file");
    let mut child = Command::new(&python)
        .arg(&script)
        .env("QTASK_ENDPOINT", format!("127.0.0.1:{}", app.https.port()))
        .env("QTASK_SECRET_ID", &app.secret_id)
        .env("QTASK_SECRET_KEY", &app.secret_key)
        .env("SSL_CERT_FILE", app.ca_file())
        .env("PYTHONIOENCODING", "utf-8")
        .env("PYTHONUNBUFFERED", "1")
        // The SDK tunnels through an HTTPS proxy when one is set; this test talks to
        // the local server only.
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("a second handle"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let status = crate::helpers::wait_child(&mut child, SCRIPT_DEADLINE).await;
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let status = status
        .unwrap_or_else(|| panic!("sdk_e2e.py ran longer than {SCRIPT_DEADLINE:?}:\n{output}"));
    let last = output.lines().last().unwrap_or_default();
    assert!(
        status.success() && last.ends_with(" 0 failed") && last.contains(" passed, "),
        "sdk_e2e.py exited with {status}; last line {last:?}; its output:\n{output}"
    );
    // The script made real calls: far more than a handful of checks passed.
    let passed: u32 = last
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {last:?}:\n{output}"));
    assert!(
        passed >= 100,
        "only {passed} checks passed; the script normally runs about 150:\n{output}"
    );
}
