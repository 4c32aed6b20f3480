//! A signing API 2.0 client: what `qtask call` and the tests use. It signs with the
//! protocol crate's code, the same the server verifies with.

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
}

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
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64);
        if let Some(path) = &config.ca_file {
            builder = builder.add_root_certificate(read_ca(path)?);
        }
        let http = builder.build().map_err(|e| ClientError::Ca {
            path: config
                .ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            http,
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
        let mut params = Params::from_pairs(params)?;
        params.set("Action", action);
        if params.get("Region").is_none() {
            params.set("Region", self.config.region.clone());
        }
        params.set("SecretId", self.config.secret_id.clone());
        params.set("Timestamp", unix_seconds().to_string());
        params.set("Nonce", fresh_nonce().to_string());
        self.send_signed(params).await
    }

    /// Signs `params` as they are (the caller set every common parameter) and sends them.
    pub async fn send_signed(&self, mut params: Params) -> Result<Value, ClientError> {
        let form = sign_request(
            &mut params,
            self.config.method,
            &self.host,
            API_PATH,
            self.config.signature_method,
            &self.config.secret_key,
        );
        self.send_form(self.config.method, form).await
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
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                endpoint: self.config.endpoint.clone(),
                source,
            })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable {
                endpoint: self.config.endpoint.clone(),
                source,
            })?;
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
