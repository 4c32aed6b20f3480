//! The web console at `/console`: how its files are served (types, security policy,
//! caching), and `tests/console/e2e.mjs` driving it in real headless Chromium through
//! Playwright — sign in, instances, a chain's outcome, the live task list, a failed
//! task's error and its retry, load balancers, queue health, history, a narrow window,
//! sign-out.

use crate::helpers::TestApp;
use crate::lb::create_lb;
use crate::sdk::workspace_root;
use reqwest::header;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the browser script may take (each of its steps has its own 20 s bound).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(240);
const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    let base = format!("http://{}", app.http);
    assert!(
        app.printed(&format!("Console: {base}/console")),
        "serve prints the console's URL: {:?}",
        app.output.lock().unwrap()
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let moved = http.get(format!("{base}/console")).send().await.unwrap();
    assert_eq!(moved.status(), 308);
    assert_eq!(moved.headers()[header::LOCATION], "/console/");

    let page = http.get(format!("{base}/console/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    let etag = headers[header::ETAG].clone();
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<script type="module" src="app.js">"#),
        "{html}"
    );
    assert!(!html.contains("<script>"), "no inline script: {html}");

    // Unchanged files are revalidated, not sent again.
    let again = http
        .get(format!("{base}/console/"))
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()[header::ETAG], etag);
    assert!(again.bytes().await.unwrap().is_empty());

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let response = http
            .get(format!("{base}/console/{file}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], content_type);
        assert_eq!(response.headers()[header::ETAG], etag, "{file}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{file}");
    }

    let missing = http
        .get(format!("{base}/console/secrets.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("secrets.txt"));

    // The HTTPS listener serves the console too (a secure context off localhost).
    let tls = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(app.ca_file()).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let secure = tls
        .get(format!("https://{}/console/", app.https))
        .send()
        .await
        .unwrap();
    assert_eq!(secure.status(), 200);
}

/// What the browser test needs, each missing piece named with how to get it.
fn browser_prerequisites(root: &Path) -> Result<(), String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node is not installed (apt-get install nodejs npm)".into());
    }
    let playwright = root.join("tests/console/node_modules/playwright-core");
    if !playwright.exists() {
        return Err(format!(
            "{} is missing: run scripts/test, or npm ci in tests/console",
            playwright.display()
        ));
    }
    if !Path::new(CHROMIUM).exists() {
        return Err(format!(
            "{CHROMIUM} is missing: run scripts/test, or apt-get install -y chromium"
        ));
    }
    Ok(())
}

#[tokio::test]
async fn the_console_works_in_headless_chromium() {
    let root = workspace_root();
    if let Err(missing) = browser_prerequisites(&root) {
        panic!("the console's browser test cannot run: {missing}");
    }
    // Fast but not instant tasks, so the page sees them move.
    let app = TestApp::spawn_with(&["--sim-speed", "0.05"]).await;
    let web = app.create_instances(2, "web").await;
    let failing = app.create_instances(1, "db qtask-fail:StopInstances").await;
    let lb = create_lb(&app, "front").await;
    let register = app
        .call(
            "RegisterInstancesWithLoadBalancer",
            &[
                ("loadBalancerId", &lb),
                ("backends.0.instanceId", &web[1]),
                ("backends.0.weight", "30"),
            ],
        )
        .await;
    assert_eq!(register["code"], 0, "{register}");
    app.wait_final(register["requestId"].as_str().unwrap())
        .await;

    let screenshots = root.join("target/console-screenshots");
    let out_dir = tempfile::tempdir().expect("a temporary directory");
    let out_path = out_dir.path().join("e2e.out");
    let out = std::fs::File::create(&out_path).expect("an output file");
    let mut child = Command::new("node")
        .arg(root.join("tests/console/e2e.mjs"))
        .current_dir(root.join("tests/console"))
        .env("QTASK_CONSOLE_URL", format!("http://{}/console", app.http))
        .env("QTASK_SECRET_ID", &app.secret_id)
        .env("QTASK_SECRET_KEY", &app.secret_key)
        .env("QTASK_INSTANCES", format!("{},{}", web[0], failing[0]))
        .env("QTASK_SPARE", &web[1])
        .env("QTASK_LOAD_BALANCER", &lb)
        .env("QTASK_SCREENSHOTS", &screenshots)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("a second handle"))
        .stderr(out)
        .spawn()
        .expect("node starts");
    let status = crate::helpers::wait_child(&mut child, SCRIPT_DEADLINE).await;
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let status =
        status.unwrap_or_else(|| panic!("e2e.mjs ran longer than {SCRIPT_DEADLINE:?}:\n{output}"));
    assert!(
        status.success() && output.contains("console e2e: all checks passed"),
        "e2e.mjs exited with {status}; its output:\n{output}"
    );
    for view in [
        "instances",
        "chain-outcome",
        "chain",
        "task",
        "tasks",
        "health",
        "load-balancer",
    ] {
        let shot = screenshots.join(format!("{view}.png"));
        assert!(shot.exists(), "no screenshot {}", shot.display());
    }
}
