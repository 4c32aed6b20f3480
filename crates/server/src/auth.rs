//! Request verification: decode the parameters, find the key, check the signature, the
//! timestamp and the common parameters, and build the engine's [`Call`].
//!
//! The nonce is not checked here: it is recorded by the engine in the same transaction
//! as the request's effects, so a replay and its original can never both succeed.

use crate::render::api_error;
use crate::{AppState, AuthSettings};
use qtask_core::{Nonce, Region, SecretId, UnixMillis};
use qtask_engine::{Call, EngineError};
use qtask_protocol::signature::{self, HttpMethod, SignatureMethod, SIGNATURE_PARAM};
use qtask_protocol::{ApiError, ErrorCode, Params, API_PATH};
use std::sync::Arc;

/// Parameters every request may carry; all others belong to the action.
pub const COMMON_PARAMS: &[&str] = &[
    "Action",
    "Region",
    "Timestamp",
    "Nonce",
    "SecretId",
    "Signature",
    "SignatureMethod",
    "Version",
    "Token",
    "RequestClient",
    "RequestSource",
];

/// An HTTP request as the API sees it.
pub struct IncomingRequest<'a> {
    pub method: HttpMethod,
    /// The `Host` the client addressed (HTTP/1.1 header or HTTP/2 authority).
    pub host: Option<&'a str>,
    pub form: &'a [u8],
    /// The client's address (recorded in the audit log).
    pub peer: std::net::SocketAddr,
}

pub async fn verify(
    state: &AppState,
    request: IncomingRequest<'_>,
    now: UnixMillis,
) -> Result<Call, ApiError> {
    let params =
        Params::decode(request.form).map_err(|e| ApiError::invalid_parameter(e.to_string()))?;
    let required = |name: &str| {
        params
            .get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::invalid_parameter(format!("parameter {name} is required")))
    };
    // Presence of every required parameter first, then their forms, then the method.
    let secret_id = required("SecretId")?;
    let claimed_signature = required(SIGNATURE_PARAM)?;
    let nonce = required("Nonce")?;
    let timestamp = required("Timestamp")?;
    let action = required("Action")?;
    let region_text = required("Region")?;
    let secret_id: SecretId = secret_id
        .parse()
        .map_err(|e| ApiError::invalid_parameter(format!("parameter SecretId {e}")))?;
    let nonce: Nonce = nonce
        .parse()
        .map_err(|e| ApiError::invalid_parameter(format!("parameter Nonce {e}")))?;
    let timestamp: i64 = timestamp.parse().ok().filter(|t| *t >= 0).ok_or_else(|| {
        ApiError::invalid_parameter("parameter Timestamp must be a Unix time in seconds")
    })?;
    let method: SignatureMethod = match params.get("SignatureMethod") {
        None => SignatureMethod::default(),
        Some(text) => text
            .parse()
            .map_err(|e| ApiError::invalid_parameter(format!("parameter {e}")))?,
    };

    let key = match state.keys.get(&secret_id) {
        Some(key) => key,
        None => {
            let key = state
                .store
                .api_key(&secret_id)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot read API keys");
                    ApiError::new(
                        ErrorCode::InternalError,
                        "internal error; the server log has details",
                    )
                })?
                .filter(|key| key.enabled)
                .map(Arc::new)
                .ok_or_else(|| api_error(&EngineError::KeyDisabled(secret_id.clone())))?;
            state.keys.keep(Arc::clone(&key));
            key
        }
    };

    let hosts = candidate_hosts(&request, &state.auth);
    let signed = hosts.iter().any(|host| {
        let message = signature::string_to_sign(request.method, host, API_PATH, &params);
        signature::verify(
            method,
            key.secret_key.as_bytes(),
            message.as_bytes(),
            claimed_signature,
        )
    });
    if !signed {
        let names: Vec<&str> = params
            .iter()
            .map(|(n, _)| n)
            .filter(|n| *n != SIGNATURE_PARAM)
            .collect();
        return Err(ApiError::new(
            ErrorCode::AuthFailure,
            format!(
                "the signature does not match: expected {method} over \"{}{}{API_PATH}?\" followed by the parameters {} \
                 sorted by name with raw values",
                request.method.as_str(),
                hosts.first().map(String::as_str).unwrap_or("<no Host header>"),
                names.join(", "),
            ),
        ));
    }

    // Only a caller who proved the key learns that its account is blocked.
    if key.account_blocked {
        return Err(api_error(&EngineError::AccountBlocked(
            key.account_name.clone(),
        )));
    }

    let window = state.auth.timestamp_window.as_secs() as i64;
    let server_seconds = now.div_euclid(1000);
    let skew = server_seconds.abs_diff(timestamp);
    if skew > window as u64 {
        return Err(ApiError::new(
            ErrorCode::RequestExpired,
            format!(
                "Timestamp {timestamp} is {skew} s from the server's clock ({server_seconds}); requests must be within {window} s"
            ),
        ));
    }

    let region: Region = region_text.parse().map_err(|_| {
        ApiError::invalid_parameter(format!(
            "parameter Region {region_text:?} is not a known region"
        ))
    })?;
    let action_params = params
        .tree(|name| !COMMON_PARAMS.contains(&name))
        .map_err(|e| ApiError::invalid_parameter(e.to_string()))?;

    Ok(Call {
        account: key.account,
        secret_id,
        nonce,
        nonce_expires_at: timestamp.saturating_add(window).saturating_mul(1000),
        signature: claimed_signature.to_owned(),
        action: action.to_owned(),
        region,
        params: action_params,
        now,
        access: key.access.clone(),
        main_key: key.main,
        source: request.peer.ip().to_string(),
    })
}

/// The hosts a client may have signed: the `Host` it sent; when that names no port, the
/// same host with the default ports (a client configured with `host:443` signs the port
/// but its HTTP library leaves a default port out of `Host`); the configured public
/// names.
fn candidate_hosts(request: &IncomingRequest<'_>, auth: &AuthSettings) -> Vec<String> {
    let mut hosts = Vec::with_capacity(2 + auth.public_names.len());
    if let Some(host) = request.host {
        hosts.push(host.to_owned());
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            && !host.ends_with(']');
        if !has_port {
            hosts.push(format!("{host}:443"));
            hosts.push(format!("{host}:80"));
        }
    }
    hosts.extend(auth.public_names.iter().cloned());
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_include_the_port_a_client_left_out() {
        let auth = AuthSettings {
            public_names: vec!["api.example.com".into()],
            ..AuthSettings::default()
        };
        let request = |host| IncomingRequest {
            method: HttpMethod::Get,
            host,
            form: b"",
            peer: ([127, 0, 0, 1], 9).into(),
        };
        assert_eq!(
            candidate_hosts(&request(Some("127.0.0.1")), &auth),
            [
                "127.0.0.1",
                "127.0.0.1:443",
                "127.0.0.1:80",
                "api.example.com"
            ]
        );
        assert_eq!(
            candidate_hosts(&request(Some("127.0.0.1:8443")), &auth),
            ["127.0.0.1:8443", "api.example.com"]
        );
        assert_eq!(
            candidate_hosts(&request(Some("[::1]")), &auth),
            ["[::1]", "[::1]:443", "[::1]:80", "api.example.com"]
        );
        assert_eq!(candidate_hosts(&request(None), &auth), ["api.example.com"]);
    }
}
