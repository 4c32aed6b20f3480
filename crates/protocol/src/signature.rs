//! Request signatures (`shared/protocol/README.md` §3).
//!
//! String to sign = `METHOD + host + path + "?" + name=value&…` over every parameter but
//! `Signature`, sorted by name byte-wise, with raw (decoded) values; on POST, parameters
//! whose value starts with `@` are left out. The signature is the base64 HMAC of that
//! string keyed by the SecretKey.

use crate::params::Params;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::Mac;
use std::fmt;
use std::str::FromStr;

/// The parameter that carries the signature; it is never signed itself.
pub const SIGNATURE_PARAM: &str = "Signature";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureMethod {
    /// The default when a request names no method (the legacy CLI never does).
    #[default]
    HmacSha1,
    HmacSha256,
}

impl SignatureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha1 => "HmacSHA1",
            Self::HmacSha256 => "HmacSHA256",
        }
    }
}

impl fmt::Display for SignatureMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SignatureMethod must be HmacSHA1 or HmacSHA256, not {0:?}")]
pub struct UnknownSignatureMethod(pub String);

impl FromStr for SignatureMethod {
    type Err = UnknownSignatureMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "HmacSHA1" => Ok(Self::HmacSha1),
            "HmacSHA256" => Ok(Self::HmacSha256),
            other => Err(UnknownSignatureMethod(other.to_owned())),
        }
    }
}

/// Builds the exact bytes the client signed.
pub fn string_to_sign(method: HttpMethod, host: &str, path: &str, params: &Params) -> String {
    let mut out = String::with_capacity(host.len() + path.len() + 16 + params.len() * 24);
    out.push_str(method.as_str());
    out.push_str(host);
    out.push_str(path);
    out.push('?');
    let mut first = true;
    // Params iterate sorted by normalised name, which is the order the clients sign in.
    for (name, value) in params.iter() {
        if name == SIGNATURE_PARAM || (method == HttpMethod::Post && value.starts_with('@')) {
            continue;
        }
        if !first {
            out.push('&');
        }
        first = false;
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The base64 signature of `message`.
pub fn sign(method: SignatureMethod, secret_key: &[u8], message: &[u8]) -> String {
    match method {
        SignatureMethod::HmacSha1 => {
            BASE64.encode(keyed::<Sha1>(secret_key, message).finalize().into_bytes())
        }
        SignatureMethod::HmacSha256 => {
            BASE64.encode(keyed::<Sha256>(secret_key, message).finalize().into_bytes())
        }
    }
}

/// Whether `signature` (base64) is the signature of `message`. The comparison takes the
/// same time wherever the first differing byte is.
pub fn verify(method: SignatureMethod, secret_key: &[u8], message: &[u8], signature: &str) -> bool {
    let Ok(claimed) = BASE64.decode(signature) else {
        return false;
    };
    match method {
        SignatureMethod::HmacSha1 => keyed::<Sha1>(secret_key, message).verify_slice(&claimed),
        SignatureMethod::HmacSha256 => keyed::<Sha256>(secret_key, message).verify_slice(&claimed),
    }
    .is_ok()
}

fn keyed<M: Mac + KeyInit>(secret_key: &[u8], message: &[u8]) -> M {
    let mut mac =
        <M as KeyInit>::new_from_slice(secret_key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac
}

type Sha1 = hmac::Hmac<sha1::Sha1>;
type Sha256 = hmac::Hmac<sha2::Sha256>;

/// Signs a request as a client: sets `SignatureMethod` and `Signature` and returns the
/// form to send (query string or body).
pub fn sign_request(
    params: &mut Params,
    http: HttpMethod,
    host: &str,
    path: &str,
    method: SignatureMethod,
    secret_key: &str,
) -> String {
    params.set("SignatureMethod", method.as_str());
    let message = string_to_sign(http, host, path, params);
    params.set(
        SIGNATURE_PARAM,
        sign(method, secret_key.as_bytes(), message.as_bytes()),
    );
    params.encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Vectors {
        vectors: Vec<Vector>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Vector {
        name: String,
        secret_key: String,
        method: String,
        host: String,
        path: String,
        params: std::collections::BTreeMap<String, String>,
        signature_method: String,
        string_to_sign: String,
        expected_signature: String,
        wire: String,
    }

    fn vectors() -> Vec<Vector> {
        let text = include_str!("../tests/signature-vectors.json");
        serde_json::from_str::<Vectors>(text).unwrap().vectors
    }

    fn http(method: &str) -> HttpMethod {
        match method {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            other => panic!("vector uses method {other}"),
        }
    }

    #[test]
    fn every_vector_signs_and_verifies() {
        let vectors = vectors();
        assert!(vectors.len() >= 12, "the vector file lost entries");
        for v in vectors {
            let method: SignatureMethod = v.signature_method.parse().unwrap();
            // From the params as the client holds them.
            let params = Params::from_pairs(v.params.clone()).unwrap();
            let message = string_to_sign(http(&v.method), &v.host, &v.path, &params);
            assert_eq!(message, v.string_to_sign, "string to sign of {}", v.name);
            let signature = sign(method, v.secret_key.as_bytes(), message.as_bytes());
            assert_eq!(signature, v.expected_signature, "signature of {}", v.name);

            // From the wire, exactly as the server receives it.
            let received = Params::decode(v.wire.as_bytes()).unwrap();
            let message = string_to_sign(http(&v.method), &v.host, &v.path, &received);
            assert_eq!(
                message, v.string_to_sign,
                "string to sign of {} from the wire",
                v.name
            );
            let claimed = received.get(SIGNATURE_PARAM).unwrap();
            assert!(
                verify(method, v.secret_key.as_bytes(), message.as_bytes(), claimed),
                "{}",
                v.name
            );
            assert!(
                !verify(method, b"wrong key", message.as_bytes(), claimed),
                "{}",
                v.name
            );
            let other = if method == SignatureMethod::HmacSha1 {
                SignatureMethod::HmacSha256
            } else {
                SignatureMethod::HmacSha1
            };
            assert!(
                !verify(other, v.secret_key.as_bytes(), message.as_bytes(), claimed),
                "{}",
                v.name
            );
        }
    }

    #[test]
    fn garbage_signatures_do_not_verify() {
        for bad in ["", "!!!", "nPVnY6njQmwQ8ciqbPl5Qe+Oru4", "AAAA"] {
            assert!(!verify(SignatureMethod::HmacSha1, b"k", b"m", bad));
        }
    }

    proptest! {
        #[test]
        fn sign_then_verify_round_trips_through_the_wire(
            pairs in proptest::collection::btree_map("[a-zA-Z][a-zA-Z0-9._]{0,8}", "\\PC*", 0..10),
            key in "[a-zA-Z0-9]{1,40}",
            post in any::<bool>(),
            sha256 in any::<bool>(),
        ) {
            let http = if post { HttpMethod::Post } else { HttpMethod::Get };
            let method = if sha256 { SignatureMethod::HmacSha256 } else { SignatureMethod::HmacSha1 };
            let Ok(mut params) = Params::from_pairs(pairs) else { return Ok(()); };
            let wire = sign_request(&mut params, http, "127.0.0.1:8443", "/v2/index.php", method, &key);
            let received = Params::decode(wire.as_bytes()).unwrap();
            let message = string_to_sign(http, "127.0.0.1:8443", "/v2/index.php", &received);
            prop_assert!(verify(method, key.as_bytes(), message.as_bytes(), received.get(SIGNATURE_PARAM).unwrap()));
        }

        #[test]
        fn any_changed_value_fails(
            pairs in proptest::collection::btree_map("[a-z]{1,6}", "[a-z0-9 ]{0,8}", 1..8),
            pick in any::<prop::sample::Index>(),
            extra in "[a-z0-9]",
        ) {
            let mut params = Params::from_pairs(pairs).unwrap();
            sign_request(&mut params, HttpMethod::Get, "h", "/p", SignatureMethod::HmacSha256, "key");
            let claimed = params.get(SIGNATURE_PARAM).unwrap().to_owned();
            let names: Vec<String> = params.iter().map(|(n, _)| n.to_owned()).filter(|n| n != SIGNATURE_PARAM && n != "SignatureMethod").collect();
            let name = pick.get(&names).clone();
            let changed = format!("{}{extra}", params.get(&name).unwrap());
            params.set(&name, changed);
            let message = string_to_sign(HttpMethod::Get, "h", "/p", &params);
            prop_assert!(!verify(SignatureMethod::HmacSha256, b"key", message.as_bytes(), &claimed));
        }
    }
}
