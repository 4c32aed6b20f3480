//! `qtask call ACTION name=value … [--wait]`: one signed call, its JSON answer, and
//! optionally a wait until every task it started is final.

use crate::client::{request_ids, Client, ClientConfig};
use crate::credentials;
use anyhow::{bail, Context};
use qtask_protocol::signature::{HttpMethod, SignatureMethod};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The action, e.g. DescribeInstances or StartInstances.
    pub action: String,
    /// Parameters as name=value, e.g. instanceIds.0=ins-1a2b3c4d goodsNum=2.
    #[arg(value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// The server [default: http://127.0.0.1:8080].
    #[arg(long, env = "QTASK_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long, env = "QTASK_SECRET_ID")]
    pub secret_id: Option<String>,
    #[arg(long, env = "QTASK_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    #[arg(long, env = "QTASK_REGION", default_value = "ap-guangzhou")]
    pub region: String,
    /// Where to find `credentials` (and `tls/ca.crt`) when keys are not given.
    #[arg(long, env = "QTASK_DATA_DIR", default_value = "qtask-data")]
    pub data_dir: PathBuf,
    /// A CA certificate to trust for https endpoints [default: DATA_DIR/tls/ca.crt if present].
    #[arg(long, env = "QTASK_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Send as POST (form body) instead of GET.
    #[arg(long)]
    pub post: bool,
    /// Sign with HmacSHA1 instead of HmacSHA256.
    #[arg(long)]
    pub sha1: bool,
    /// Wait until every task the call started is final; exit 1 if any failed.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_timeout: u64,
}

/// Runs the call; the exit code is 0 when everything succeeded, 1 otherwise.
pub async fn run(args: CallArgs) -> anyhow::Result<i32> {
    let params = args
        .params
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .with_context(|| format!("{p:?} is not NAME=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = client(&args)?;
    let answer = client.call(&args.action, params).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    let code = answer.get("code").and_then(Value::as_i64).unwrap_or(-1);
    if !args.wait {
        return Ok(i32::from(code != 0));
    }
    let ids = request_ids(&answer);
    let mut failed = code != 0;
    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout);
    for id in ids {
        let result = wait_for(&client, &id, deadline).await?;
        let status = result.pointer("/data/status").and_then(Value::as_i64);
        failed |= status != Some(0);
        eprintln!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(i32::from(failed))
}

/// Polls DescribeTaskResult until the task (or chain) is final.
pub async fn wait_for(
    client: &Client,
    request_id: &str,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let mut delay = Duration::from_millis(50);
    loop {
        let result = client
            .call("DescribeTaskResult", [("requestId", request_id)])
            .await?;
        if result.get("code").and_then(Value::as_i64) != Some(0) {
            bail!("DescribeTaskResult {request_id} failed: {result}");
        }
        if result.pointer("/data/status").and_then(Value::as_i64) != Some(2) {
            return Ok(result);
        }
        if Instant::now() >= deadline {
            bail!("task {request_id} is still unfinished; gave up waiting");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

fn client(args: &CallArgs) -> anyhow::Result<Client> {
    let (secret_id, secret_key) = match (&args.secret_id, &args.secret_key) {
        (Some(id), Some(key)) => (id.clone(), key.clone()),
        (None, None) => {
            let path = credentials::path(&args.data_dir);
            credentials::read(&path).context(
                "no keys given: pass --secret-id and --secret-key, set QTASK_SECRET_ID and QTASK_SECRET_KEY, \
                 or point --data-dir at a server's data directory",
            )?
        }
        _ => bail!("give both a SecretId and a SecretKey, or neither"),
    };
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let default_ca = args.data_dir.join("tls").join("ca.crt");
    let ca_file = args
        .ca_file
        .clone()
        .or_else(|| (endpoint.starts_with("https:") && default_ca.exists()).then_some(default_ca));
    Ok(Client::new(ClientConfig {
        endpoint,
        secret_id,
        secret_key,
        region: args.region.clone(),
        method: if args.post {
            HttpMethod::Post
        } else {
            HttpMethod::Get
        },
        signature_method: if args.sha1 {
            SignatureMethod::HmacSha1
        } else {
            SignatureMethod::HmacSha256
        },
        ca_file,
    })?)
}
