//! The signature canonicaliser and verifier, through a client's `sign_request`.
//!
//! Input: `<flags byte><secret key>\n<form>`. Flags: bit 0 = POST, bit 1 = HmacSHA256;
//! the key is the UTF-8 text up to the first newline, the form the rest.
//! Asserts: the signed form decodes to the very parameters signed and verifies with the
//! key; it does not verify with another key or the other method; and every single-byte
//! change of the signed form (each position, XOR with a mask taken from the flags) is
//! refused by the decoder, or fails verification, or carries exactly the signed content
//! (same string to sign, same signature bytes: e.g. `%2b` for `%2B`).
#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use qtask_protocol::params::MAX_PARAMS;
use qtask_protocol::signature::{sign_request, string_to_sign, verify, SIGNATURE_PARAM};
use qtask_protocol::{HttpMethod, Params, SignatureMethod};

const HOST: &str = "127.0.0.1:8443";
const PATH: &str = "/v2/index.php";
/// Forms longer than this get only one flipped position (the one the flags pick), so
/// a long input costs one verification, not thousands.
const FLIP_EVERY_BYTE_UP_TO: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(key) = std::str::from_utf8(&rest[..newline]) else {
        return;
    };
    let Ok(mut params) = Params::decode(&rest[newline + 1..]) else {
        return;
    };
    // Signing adds two parameters; a form already at the limit is refused by design.
    if params.len() + 2 > MAX_PARAMS {
        return;
    }
    let http = if flags & 1 == 0 {
        HttpMethod::Get
    } else {
        HttpMethod::Post
    };
    let method = if flags & 2 == 0 {
        SignatureMethod::HmacSha1
    } else {
        SignatureMethod::HmacSha256
    };

    let wire = sign_request(&mut params, http, HOST, PATH, method, key);
    let received = Params::decode(wire.as_bytes())
        .unwrap_or_else(|e| panic!("the signed form {wire:?} does not decode: {e}"));
    assert_eq!(received, params, "the wire changed the signed parameters");
    let message = string_to_sign(http, HOST, PATH, &received);
    assert!(message.starts_with(&format!("{}{HOST}{PATH}?", http.as_str())));
    let signature = received.get(SIGNATURE_PARAM).expect("sign_request sets it");
    assert!(
        verify(method, key.as_bytes(), message.as_bytes(), signature),
        "a freshly signed request does not verify"
    );
    assert!(!verify(
        method,
        format!("{key}x").as_bytes(),
        message.as_bytes(),
        signature
    ));
    let other = match method {
        SignatureMethod::HmacSha1 => SignatureMethod::HmacSha256,
        SignatureMethod::HmacSha256 => SignatureMethod::HmacSha1,
    };
    assert!(!verify(
        other,
        key.as_bytes(),
        message.as_bytes(),
        signature
    ));

    let signed_bytes = BASE64.decode(signature).expect("we produced it");
    let mask = (flags >> 2).max(1);
    let chosen = usize::from(flags) * 31 % wire.len();
    let positions: Box<dyn Iterator<Item = usize>> = if wire.len() <= FLIP_EVERY_BYTE_UP_TO {
        Box::new(0..wire.len())
    } else {
        Box::new(std::iter::once(chosen))
    };
    for at in positions {
        let mut flipped = wire.clone().into_bytes();
        flipped[at] ^= mask;
        check_flipped(http, key, &flipped, &message, &signed_bytes);
    }
});

/// A changed form must be refused unless it carries exactly what was signed.
fn check_flipped(http: HttpMethod, key: &str, form: &[u8], message: &str, signed: &[u8]) {
    // What the server does: decode, pick the method the request names, verify.
    let Ok(params) = Params::decode(form) else {
        return;
    };
    let method = match params.get("SignatureMethod") {
        None => SignatureMethod::default(),
        Some(name) => match name.parse::<SignatureMethod>() {
            Ok(method) => method,
            Err(_) => return,
        },
    };
    let Some(signature) = params.get(SIGNATURE_PARAM) else {
        return;
    };
    let changed_message = string_to_sign(http, HOST, PATH, &params);
    if !verify(
        method,
        key.as_bytes(),
        changed_message.as_bytes(),
        signature,
    ) {
        return;
    }
    assert_eq!(
        changed_message,
        message,
        "a changed form ({:?}) verified with a different string to sign",
        String::from_utf8_lossy(form)
    );
    assert_eq!(
        BASE64.decode(signature).ok().as_deref(),
        Some(signed),
        "a changed form verified with different signature bytes"
    );
}
