//! A signing API 2.0 client: what `qtask call` and the tests use. It signs with the
//! protocol crate's code, the same the server verifies with. Besides calls it opens
//! the task event stream (`/v2/events`, Server-Sent Events), signed the same way.

use qtask_protocol::signature::{sign_request, HttpMethod, SignatureMethod};
use qtask_protocol::{Params, API_PATH};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: give a URL such as http://127.0.0.1:8080 or https://127.0.0.1:8443")]
    Endpoint(String),
    #[error("cannot read CA certificate {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("parameter problem: {0}")]
    Params(#[from] qtask_protocol::ParamError),
    #[error("could not reach {endpoint}: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the server's answer is not JSON: {0}")]
    NotJson(String),
    /// The server answered an event stream request with an API error envelope.
    #[error("the server refused the event stream: {code} {message}")]
    StreamRefused { code: i64, message: String },
    #[error("the event stream from {endpoint} broke off: {source}")]
    StreamBroken {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The path of the task event stream.
pub const EVENTS_PATH: &str = "/v2/events";

/// The action an event stream request is signed as.
pub const WATCH_ACTION: &str = "WatchTaskEvents";

/// A stream that sends a keepalive every 15 s is dead after this long without a byte.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to call.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: String,
    pub secret_id: String,
    pub secret_key: String,
    pub region: String,
    pub method: HttpMethod,
    pub signature_method: SignatureMethod,
    /// A PEM CA certificate to trust (e.g. the server's generated `tls/ca.crt`).
    pub ca_file: Option<std::path::PathBuf>,
}

pub struct Client {
    http: reqwest::Client,
    /// Without the per-request time limit `http` has: event streams last.
    streaming: reqwest::Client,
    url: url::Url,
    /// `host[:port]` exactly as sent in `Host`, which is what gets signed.
    host: String,
    config: ClientConfig,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let mut url = url::Url::parse(&config.endpoint)
            .map_err(|_| ClientError::Endpoint(config.endpoint.clone()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ClientError::Endpoint(config.endpoint.clone()));
        }
        url.set_path(API_PATH);
        url.set_query(None);
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let ca = config.ca_file.as_deref().map(read_ca).transpose()?;
        let build = |builder: reqwest::ClientBuilder| {
            let builder = match &ca {
                Some(certificate) => builder.add_root_certificate(certificate.clone()),
                None => builder,
            };
            builder
                .use_rustls_tls()
                .build()
                .map_err(|e| ClientError::Ca {
                    path: config
                        .ca_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    reason: e.to_string(),
                })
        };
        let http = build(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(64),
        )?;
        let streaming = build(reqwest::Client::builder().read_timeout(STREAM_READ_TIMEOUT))?;
        Ok(Self {
            http,
            streaming,
            url,
            host,
            config,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Signs and sends one call; returns the answer's JSON (whatever its `code`).
    pub async fn call<N, V>(
        &self,
        action: &str,
        params: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Value, ClientError>
    where
        N: Into<String>,
        V: Into<String>,
    {
        let params = self.with_common_params(action, params)?;
        self.send_signed(params).await
    }

    /// A call signed with a fresh nonce, as the form to send (the query string of a GET,
    /// the body of a POST, per [`ClientConfig::method`]): for senders of their own
    /// (`qtask bench`).
    pub fn signed_form<N, V>(
        &self,
        action: &str,
        params: impl IntoIterator<Item = (N, V)>,
    ) -> Result<String, ClientError>
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut params = self.with_common_params(action, params)?;
        Ok(self.sign(&mut params, self.config.method))
    }

    /// `params` with `Action` and the common parameters (region, key, timestamp, nonce).
    fn with_common_params<N, V>(
        &self,
        action: &str,
        params: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Params, ClientError>
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut params = Params::from_pairs(params)?;
        params.set("Action", action);
        if params.get("Region").is_none() {
            params.set("Region", self.config.region.clone());
        }
        params.set("SecretId", self.config.secret_id.clone());
        params.set("Timestamp", unix_seconds().to_string());
        params.set("Nonce", fresh_nonce().to_string());
        Ok(params)
    }

    /// Signs `params` as they are (the caller set every common parameter) and sends them.
    pub async fn send_signed(&self, mut params: Params) -> Result<Value, ClientError> {
        let form = self.sign(&mut params, self.config.method);
        self.send_form(self.config.method, form).await
    }

    fn sign(&self, params: &mut Params, method: HttpMethod) -> String {
        sign_request(
            params,
            method,
            &self.host,
            API_PATH,
            self.config.signature_method,
            &self.config.secret_key,
        )
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.config.endpoint.clone(),
            source,
        }
    }

    /// Opens the task event stream: `GET /v2/events`, signed like a call of
    /// [`WATCH_ACTION`] with `params` (`requestId`, `action`). An error the server
    /// answers before the stream starts is [`ClientError::StreamRefused`]; a server
    /// without the endpoint answers [`ClientError::Status`] 404.
    pub async fn events<N, V>(
        &self,
        params: impl IntoIterator<Item = (N, V)>,
    ) -> Result<EventStream, ClientError>
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut params = self.with_common_params(WATCH_ACTION, params)?;
        // Signed exactly like a GET call of the API (its path included), whatever the
        // client's method for calls: the stream is only served over GET.
        let query = self.sign(&mut params, HttpMethod::Get);
        let mut url = self.url.clone();
        url.set_path(EVENTS_PATH);
        url.set_query(Some(&query));
        let response = self
            .streaming
            .get(url)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status.is_success() && is_stream {
            return Ok(EventStream {
                response,
                parser: SseParser::default(),
                pending: std::collections::VecDeque::new(),
                endpoint: self.config.endpoint.clone(),
            });
        }
        let body = response.text().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status: status.as_u16(),
                body,
            });
        }
        let answer: Value = serde_json::from_str(&body).map_err(|_| ClientError::NotJson(body))?;
        Err(ClientError::StreamRefused {
            code: answer.get("code").and_then(Value::as_i64).unwrap_or(-1),
            message: answer
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// Sends an already encoded form, signed or not (tests use it to send bad requests).
    pub async fn send_form(&self, method: HttpMethod, form: String) -> Result<Value, ClientError> {
        let request = match method {
            HttpMethod::Get => {
                let mut url = self.url.clone();
                url.set_query(Some(&form));
                self.http.get(url)
            }
            HttpMethod::Post => self
                .http
                .post(self.url.clone())
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form),
        };
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_str(&body).map_err(|_| ClientError::NotJson(body))
    }

    /// The `host[:port]` this client signs.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `event:`; "message" when the server named none.
    pub event: String,
    pub id: Option<String>,
    /// The `data:` lines, joined with newlines.
    pub data: String,
}

/// An open event stream; [`EventStream::next`] yields its events in order.
pub struct EventStream {
    response: reqwest::Response,
    parser: SseParser,
    pending: std::collections::VecDeque<SseEvent>,
    endpoint: String,
}

impl EventStream {
    /// The next event, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, ClientError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let chunk =
                self.response
                    .chunk()
                    .await
                    .map_err(|source| ClientError::StreamBroken {
                        endpoint: self.endpoint.clone(),
                        source,
                    })?;
            match chunk {
                Some(bytes) => self.pending.extend(self.parser.push(&bytes)),
                None => return Ok(None),
            }
        }
    }
}

/// The `text/event-stream` format, fed in arbitrary chunks: fields up to a blank line
/// make an event; lines starting with `:` (keepalives) are comments.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Consumes `bytes`; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.partial.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.line(&String::from_utf8_lossy(&line)) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(SseEvent {
                event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                id: self.id.take(),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "event" => self.event = Some(value),
            "id" => self.id = Some(value),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value),
            },
            _ => {}
        }
        None
    }
}

fn read_ca(path: &Path) -> Result<reqwest::Certificate, ClientError> {
    let error = |reason: String| ClientError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| error(e.to_string()))
}

pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random nonce over the whole range the protocol allows (1 to 2^63−1).
pub fn fresh_nonce() -> u64 {
    rand::random::<u64>() % (i64::MAX as u64) + 1
}

/// Every request ID an answer names: its own `requestId` and each `detail` entry's.
pub fn request_ids(answer: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    if let Some(id) = answer.get("requestId").and_then(Value::as_str) {
        ids.push(id.to_owned());
        // A chain's own ID covers all of its tasks.
        return ids;
    }
    if let Some(detail) = answer.get("detail").and_then(Value::as_object) {
        ids.extend(
            detail
                .values()
                .filter_map(|entry| entry.get("requestId").and_then(Value::as_str))
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
        );
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::{SseEvent, SseParser};

    #[test]
    fn events_split_across_chunks_and_keepalives_are_skipped() {
        let mut parser = SseParser::default();
        let stream = b": keepalive\n\nevent: started\nid: 7\ndata: {\"seq\":7}\n\nevent: end\r\ndata: a\r\ndata: b\r\n\r\n";
        let mut events = Vec::new();
        for chunk in stream.chunks(5) {
            events.extend(parser.push(chunk));
        }
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "started".into(),
                    id: Some("7".into()),
                    data: "{\"seq\":7}".into(),
                },
                SseEvent {
                    event: "end".into(),
                    id: None,
                    data: "a\nb".into(),
                },
            ]
        );
    }
}
