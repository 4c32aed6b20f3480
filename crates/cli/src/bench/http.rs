//! A lean HTTP/1.1 connection for the load loop: one keep-alive connection per
//! concurrent caller, no pool, no redirects, no decompression — so the generator spends
//! little of the CPU it shares with the server. Plain HTTP only: TLS would measure
//! rustls, not qtask. A broken connection is opened again on the next request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use qtask_protocol::signature::HttpMethod;
use qtask_protocol::API_PATH;
use tokio::net::TcpStream;

/// Where to connect and what to put in `Host` (what the client signed).
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub address: String,
    /// The `Host` header.
    pub host: String,
    pub method: HttpMethod,
}

impl Target {
    /// The target of an `http://` endpoint; any other scheme is refused by name.
    pub fn of(endpoint: &str, host: &str, method: HttpMethod) -> anyhow::Result<Self> {
        let url = url::Url::parse(endpoint)
            .map_err(|_| anyhow::anyhow!("--endpoint {endpoint:?} is not a URL"))?;
        if url.scheme() != "http" {
            anyhow::bail!(
                "--endpoint must be an http:// URL: qtask bench speaks plain HTTP \
                 (TLS would measure the TLS library), not {endpoint:?}"
            );
        }
        let address = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port_or_known_default().unwrap_or(80)
        );
        Ok(Self {
            address,
            host: host.to_owned(),
            method,
        })
    }
}

pub struct Connection {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            sender: None,
        }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(&self.target.address).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just connected"))
    }

    /// Sends a signed form as an API call; returns the answer's body.
    pub async fn call(&mut self, form: String) -> anyhow::Result<Bytes> {
        let request = match self.target.method {
            HttpMethod::Get => Request::get(format!("{API_PATH}?{form}"))
                .header(HOST, &self.target.host)
                .body(Full::default()),
            HttpMethod::Post => Request::post(API_PATH)
                .header(HOST, &self.target.host)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form))),
        }?;
        self.send(request).await
    }

    /// `GET path` (e.g. `/metrics`); returns the body.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Bytes> {
        let request = Request::get(path)
            .header(HOST, &self.target.host)
            .body(Full::default())?;
        self.send(request).await
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<Bytes> {
        let sent = async {
            let sender = self.sender().await?;
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                anyhow::bail!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                );
            }
            Ok(body)
        }
        .await;
        if sent.is_err() {
            // Open a fresh connection next time rather than reuse a broken one.
            self.sender = None;
        }
        sent
    }
}
