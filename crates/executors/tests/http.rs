//! The `http` executor against a real local receiver that checks signatures the way a
//! user's webhook would.

mod common;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{claimed_task, expected_document, wait_until};
use qtask_engine::executor::{ExecError, Executor};
use qtask_executors::{
    verify_signature, HttpConfigError, HttpExecutor, HttpSettings, ATTEMPT_HEADER,
    REQUEST_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "webhook-shared-secret";

/// A request the receiver accepted.
#[derive(Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Received>>>);

impl Log {
    fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

/// Serves, on 127.0.0.1 and a free port:
/// - `/ok`: verifies the signature (401 if wrong), logs the request, answers JSON;
/// - `/empty`: 200 with no body; `/not-json`: 200 with HTML;
/// - `/status/{code}`: that status with a short body;
/// - `/slow`: logs the request, then answers after a minute.
async fn receiver() -> (String, Log) {
    let log = Log::default();
    let app = Router::new()
        .route("/ok", post(verified))
        .route("/empty", post(|| async { StatusCode::OK }))
        .route(
            "/not-json",
            post(|| async { (StatusCode::OK, "<html>all done</html>") }),
        )
        .route(
            "/status/{code}",
            post(|Path(code): Path<u16>| async move {
                (
                    StatusCode::from_u16(code).unwrap(),
                    format!("injected failure {code}"),
                )
            }),
        )
        .route("/slow", post(slow))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, log)
}

async fn verified(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if !verify_signature(
        SECRET,
        &header(TIMESTAMP_HEADER),
        &body,
        &header(SIGNATURE_HEADER),
    ) {
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let document: Value = serde_json::from_slice(&body).unwrap();
    log.0.lock().unwrap().push(Received { headers, body });
    let answer = json!({"backupId": "bk-1", "for": document["requestId"]});
    (StatusCode::OK, answer.to_string())
}

async fn slow(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> &'static str {
    log.0.lock().unwrap().push(Received { headers, body });
    tokio::time::sleep(Duration::from_secs(60)).await;
    "{}"
}

fn executor(url: String, secret: Option<&str>, timeout: Option<Duration>) -> HttpExecutor {
    HttpExecutor::new(HttpSettings {
        url,
        secret: secret.map(str::to_owned),
        timeout,
    })
    .unwrap()
}

async fn post_to(url: String) -> Result<Option<Value>, ExecError> {
    executor(url, Some(SECRET), Some(Duration::from_secs(10)))
        .execute(
            &claimed_task(json!({"bucket": "b"})),
            &CancellationToken::new(),
        )
        .await
}

#[tokio::test]
async fn a_signed_post_gets_the_json_answer_as_its_result() {
    let (base, log) = receiver().await;
    let result = post_to(format!("{base}/ok")).await.unwrap();
    assert_eq!(result, Some(json!({"backupId": "bk-1", "for": 42})));

    let [request] = &log.all()[..] else {
        panic!("one request expected");
    };
    let document: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(document, expected_document(json!({"bucket": "b"})));
    let header = |name: &str| request.headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header(REQUEST_ID_HEADER), "42");
    assert_eq!(header(ATTEMPT_HEADER), "2");
    let timestamp: u64 = header(TIMESTAMP_HEADER).parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(timestamp) < 60,
        "timestamp {timestamp}, now {now}"
    );
}

#[tokio::test]
async fn the_receiver_rejects_a_tampered_body_or_a_wrong_secret() {
    let (base, log) = receiver().await;
    post_to(format!("{base}/ok")).await.unwrap();
    let request = log.all().pop().unwrap();
    let timestamp = request.headers[TIMESTAMP_HEADER].to_str().unwrap();
    let signature = request.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(verify_signature(
        SECRET,
        timestamp,
        &request.body,
        signature
    ));
    let tampered = String::from_utf8(request.body.to_vec())
        .unwrap()
        .replace("\"bucket\":\"b\"", "\"bucket\":\"evil\"");
    assert_ne!(tampered.as_bytes(), &request.body[..]);
    assert!(!verify_signature(
        SECRET,
        timestamp,
        tampered.as_bytes(),
        signature
    ));
    assert!(!verify_signature(SECRET, "1", &request.body, signature));

    for secret in [Some("not-the-secret"), None] {
        let error = executor(format!("{base}/ok"), secret, None)
            .execute(&claimed_task(json!({})), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(
            error,
            fatal("the webhook answered 401 Unauthorized: bad signature")
        );
    }
    assert_eq!(log.all().len(), 1, "unsigned requests were refused");
}

#[tokio::test]
async fn an_empty_2xx_succeeds_without_a_result() {
    let (base, _) = receiver().await;
    assert_eq!(post_to(format!("{base}/empty")).await.unwrap(), None);
}

#[tokio::test]
async fn a_2xx_that_is_not_json_is_fatal() {
    let (base, _) = receiver().await;
    assert_eq!(
        post_to(format!("{base}/not-json")).await.unwrap_err(),
        fatal("the webhook answered 200 OK with a body that is not JSON: <html>all done</html>")
    );
}

#[tokio::test]
async fn server_errors_and_too_many_requests_are_retryable() {
    let (base, _) = receiver().await;
    for (code, status) in [
        (500, "500 Internal Server Error"),
        (503, "503 Service Unavailable"),
        (429, "429 Too Many Requests"),
    ] {
        assert_eq!(
            post_to(format!("{base}/status/{code}")).await.unwrap_err(),
            retryable(&format!(
                "the webhook answered {status}: injected failure {code}"
            ))
        );
    }
}

#[tokio::test]
async fn other_client_errors_and_redirects_are_fatal() {
    let (base, _) = receiver().await;
    for (code, status) in [
        (404, "404 Not Found"),
        (400, "400 Bad Request"),
        (302, "302 Found"),
    ] {
        assert_eq!(
            post_to(format!("{base}/status/{code}")).await.unwrap_err(),
            fatal(&format!(
                "the webhook answered {status}: injected failure {code}"
            ))
        );
    }
}

#[tokio::test]
async fn an_answer_slower_than_the_request_timeout_is_retryable() {
    let (base, _) = receiver().await;
    let error = executor(
        format!("{base}/slow"),
        Some(SECRET),
        Some(Duration::from_millis(300)),
    )
    .execute(&claimed_task(json!({})), &CancellationToken::new())
    .await
    .unwrap_err();
    let ExecError::Retryable(error) = error else {
        panic!("a timeout must be retryable: {error:?}");
    };
    assert!(
        error.message.starts_with("the webhook request timed out: "),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // A port that was free a moment ago, and nobody listens on now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = post_to(format!("http://127.0.0.1:{port}/ok"))
        .await
        .unwrap_err();
    let ExecError::Retryable(error) = error else {
        panic!("a refused connection must be retryable: {error:?}");
    };
    assert!(
        error
            .message
            .starts_with("the webhook request could not be reached: ")
            && error.message.contains("Connection refused"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("127.0.0.1"), "{}", error.message);
}

#[tokio::test]
async fn cancel_abandons_the_request() {
    let (base, log) = receiver().await;
    let cancel = CancellationToken::new();
    let task = claimed_task(json!({}));
    let executor = executor(format!("{base}/slow"), Some(SECRET), None);
    let (outcome, ()) = tokio::join!(executor.execute(&task, &cancel), async {
        wait_until(Duration::from_secs(10), "the request arrived", || async {
            !log.all().is_empty()
        })
        .await;
        cancel.cancel();
    });
    assert_eq!(
        outcome.unwrap_err(),
        ExecError::Canceled("canceled while running: the webhook request was abandoned".into())
    );
}

#[test]
fn only_http_urls_are_accepted() {
    for url in ["not a url", "ftp://example.com/hook", "/relative"] {
        let outcome = HttpExecutor::new(HttpSettings {
            url: url.into(),
            secret: None,
            timeout: None,
        });
        assert!(
            matches!(&outcome, Err(HttpConfigError::BadUrl { url: bad, .. }) if bad == url),
            "{url}"
        );
    }
}

fn fatal(message: &str) -> ExecError {
    ExecError::Fatal(qtask_core::TaskError::operation_failed(message))
}

fn retryable(message: &str) -> ExecError {
    ExecError::Retryable(qtask_core::TaskError::operation_failed(message))
}
