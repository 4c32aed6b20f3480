//! The wire protocol against the real server: every refusal code with the parameter or
//! reason its message names, and the request forms the legacy clients send that must be
//! accepted (both methods and signature methods, `_` names, `@` values on POST, the
//! optional signed parameters, legacy region codes, HTTPS).

use crate::helpers::{qtask_keys, TestApp};
use qtask::client::{fresh_nonce, unix_seconds, Client, ClientConfig, ClientError};
use qtask_protocol::signature::{sign, string_to_sign, HttpMethod, SignatureMethod};
use qtask_protocol::{Params, API_PATH};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAX_NONCE: &str = "9223372036854775807";

// ---------------------------------------------------------------------------------
// Helpers

/// The common parameters of a request (not yet signed) plus `extra`.
fn request(app: &TestApp, action: &str, extra: &[(&str, &str)]) -> Params {
    request_as(&app.secret_id, action, extra)
}

fn request_as(secret_id: &str, action: &str, extra: &[(&str, &str)]) -> Params {
    let mut params = Params::from_pairs(extra.iter().map(|(n, v)| (*n, *v))).expect("valid pairs");
    let defaults = [
        ("Action", action.to_owned()),
        ("Region", "ap-guangzhou".to_owned()),
        ("SecretId", secret_id.to_owned()),
        ("Timestamp", unix_seconds().to_string()),
        ("Nonce", fresh_nonce().to_string()),
    ];
    for (name, value) in defaults {
        if params.get(name).is_none() {
            params.set(name, value);
        }
    }
    params
}

/// Signs `params` the way `client` is configured (method, host, key, signature method),
/// leaving every parameter as given: a `SignatureMethod` already present is kept even if
/// it is not the one the signature is computed with.
fn signed(client: &Client, mut params: Params) -> Params {
    let config = client.config();
    if params.get("SignatureMethod").is_none() {
        params.set("SignatureMethod", config.signature_method.as_str());
    }
    let message = string_to_sign(config.method, client.host(), API_PATH, &params);
    params.set(
        "Signature",
        sign(
            config.signature_method,
            config.secret_key.as_bytes(),
            message.as_bytes(),
        ),
    );
    params
}

/// Form-encodes name/value pairs exactly as given (names are not normalised).
fn encode(pairs: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .finish()
}

fn pairs(params: &Params) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// Sends a form with the client's HTTP method; the answer must be HTTP 200 JSON.
async fn send(client: &Client, form: String) -> Value {
    client
        .send_form(client.config().method, form)
        .await
        .expect("the server answers HTTP 200 with JSON")
}

/// Signs and sends `params` with `client`.
async fn send_signed(client: &Client, params: Params) -> Value {
    let form = signed(client, params).encode();
    send(client, form).await
}

/// Asserts an error envelope: its code, its code name and every fragment of its message.
#[track_caller]
fn assert_refused(answer: &Value, code: u64, code_desc: &str, fragments: &[&str], case: &str) {
    assert_eq!(answer["code"], code, "{case}: {answer}");
    assert_eq!(answer["codeDesc"], code_desc, "{case}: {answer}");
    let message = answer["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: no message in {answer}"));
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "{case}: the message does not contain {fragment:?}: {answer}"
        );
    }
}

#[track_caller]
fn assert_ok(answer: &Value, case: &str) {
    assert_eq!(answer["code"], 0, "{case}: {answer}");
    assert_eq!(answer["codeDesc"], "Success", "{case}: {answer}");
}

/// A plain HTTP client for requests the signing client cannot make.
fn raw_http() -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

fn api_url(app: &TestApp, query: &str) -> String {
    format!("http://{}{API_PATH}?{query}", app.http)
}

/// Waits, when the current second is more than half gone, for the next one to begin:
/// a request sent right after is checked by the server within the same second, so a
/// timestamp offset by N seconds is exactly N seconds off when it is checked.
async fn start_of_a_second() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let millis = u64::from(now.subsec_millis());
    if millis > 500 {
        tokio::time::sleep(Duration::from_millis(1000 - millis + 5)).await;
    }
    unix_seconds()
}

fn count(answer: &Value) -> u64 {
    answer["totalCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("no totalCount in {answer}"))
}

// ---------------------------------------------------------------------------------
// 4000: parameter problems

#[tokio::test]
async fn each_missing_common_parameter_is_named() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let required = [
        "Action",
        "Region",
        "Timestamp",
        "Nonce",
        "SecretId",
        "Signature",
    ];
    for name in required {
        let full = signed(
            &client,
            request(&app, "DescribeInstances", &[("limit", "1")]),
        );
        // Absent, then present with an empty value: both are missing.
        let absent: Vec<(String, String)> = pairs(&full)
            .into_iter()
            .filter(|(n, _)| n != name)
            .collect();
        let empty: Vec<(String, String)> = pairs(&full)
            .into_iter()
            .map(|(n, v)| {
                if n == name {
                    (n, String::new())
                } else {
                    (n, v)
                }
            })
            .collect();
        let expected = format!("parameter {name} is required");
        for (form, how) in [(encode(&absent), "absent"), (encode(&empty), "empty")] {
            let answer = send(&client, form).await;
            assert_refused(
                &answer,
                4000,
                "InvalidParameter",
                &[&expected],
                &format!("{name} {how}"),
            );
        }
    }
}

#[tokio::test]
async fn malformed_common_parameters_are_refused_naming_them() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let nonce = "parameter Nonce must be a positive integer of at most 9223372036854775807";
    let timestamp = "parameter Timestamp must be a Unix time in seconds";
    let secret_id = "parameter SecretId must be 1 to 128 ASCII letters or digits";
    // (parameter, value, message fragment)
    let cases: &[(&str, &str, &str)] = &[
        ("Nonce", "0", nonce),
        ("Nonce", "-1", nonce),
        ("Nonce", "abc", nonce),
        ("Nonce", "1.5", nonce),
        ("Nonce", "+7", nonce),
        ("Nonce", "9223372036854775808", nonce),
        ("Nonce", "18446744073709551616", nonce),
        ("Timestamp", "abc", timestamp),
        ("Timestamp", "-1", timestamp),
        ("Timestamp", "1.5", timestamp),
        ("Timestamp", "1e9", timestamp),
        ("SecretId", "not a key!", secret_id),
        (
            "SignatureMethod",
            "HmacMD5",
            "SignatureMethod must be HmacSHA1 or HmacSHA256, not \"HmacMD5\"",
        ),
        (
            "SignatureMethod",
            "hmacsha256",
            "SignatureMethod must be HmacSHA1 or HmacSHA256, not \"hmacsha256\"",
        ),
        (
            "Region",
            "mars",
            "parameter Region \"mars\" is not a known region",
        ),
        (
            "Region",
            "AP-GUANGZHOU",
            "parameter Region \"AP-GUANGZHOU\" is not a known region",
        ),
    ];
    for (name, value, fragment) in cases {
        // Signed over the bad value, so only the value itself can be the problem.
        let params = request(&app, "DescribeInstances", &[(name, value)]);
        let answer = send_signed(&client, params).await;
        assert_refused(
            &answer,
            4000,
            "InvalidParameter",
            &[fragment],
            &format!("{name}={value}"),
        );
    }
}

#[tokio::test]
async fn the_largest_nonce_is_accepted() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let params = request(&app, "DescribeInstances", &[("Nonce", MAX_NONCE)]);
    let answer = send_signed(&client, params).await;
    assert_ok(&answer, "Nonce 2^63-1");
    assert_eq!(count(&answer), 0, "{answer}");
    // And it is remembered like any other: another request with it is a replay.
    let params = request(
        &app,
        "DescribeInstances",
        &[("Nonce", MAX_NONCE), ("limit", "5")],
    );
    let answer = send_signed(&client, params).await;
    assert_refused(
        &answer,
        4500,
        "NonceReplayed",
        &["Nonce was already used"],
        "Nonce 2^63-1 again",
    );
}

#[tokio::test]
async fn action_parameter_problems_name_the_parameter() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let many: Vec<String> = (0..101).map(|i| format!("ins-{i:08}")).collect();
    let many_pairs: Vec<(String, &str)> = many
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("instanceIds.{i}"), id.as_str()))
        .collect();
    let many_refs: Vec<(&str, &str)> = many_pairs.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    // (action, parameters, message fragments)
    let cases = vec![
        (
            "StartInstances",
            vec![("instanceIds.0", "ins-aaaaaaaa"), ("foo", "1")],
            vec!["parameter foo is not a parameter of StartInstances; it takes instanceIds"],
        ),
        (
            "DescribeInstances",
            vec![("limitt", "1")],
            vec![
                "parameter limitt is not a parameter of DescribeInstances; it takes",
                "searchWord",
            ],
        ),
        (
            "DescribeInstances",
            vec![
                ("instanceIds.0", "ins-aaaaaaaa"),
                ("instanceIds.2", "ins-bbbbbbbb"),
            ],
            vec!["list instanceIds has no element instanceIds.1"],
        ),
        (
            "StartInstances",
            vec![("instanceIds.1", "ins-aaaaaaaa")],
            vec!["list instanceIds has no element instanceIds.0"],
        ),
        (
            "StartInstances",
            vec![
                ("instanceIds.0", "ins-aaaaaaaa"),
                ("instanceIds.1", "ins-bbbbbbbb"),
                ("instanceIds.2", "INS-12345678"),
            ],
            vec![
                "parameter instanceIds.2 must look like ins-xxxxxxxx",
                "INS-12345678",
            ],
        ),
        (
            "StopInstances",
            vec![("instanceIds.0", "ins-aaaa")],
            vec!["parameter instanceIds.0 must look like ins-xxxxxxxx"],
        ),
        (
            "StartInstances",
            many_refs.clone(),
            vec!["parameter instanceIds names 101 resources; at most 100 per call"],
        ),
        (
            "StartInstances",
            vec![
                ("instanceIds.0", "ins-aaaaaaaa"),
                ("instanceIds.1", "ins-bbbbbbbb"),
                ("instanceIds.2", "ins-aaaaaaaa"),
            ],
            vec!["parameter instanceIds.2 repeats ins-aaaaaaaa; name each resource once"],
        ),
        (
            "StartInstances",
            vec![],
            vec!["parameter instanceIds is required"],
        ),
        (
            "DescribeInstances",
            vec![("limit", "101")],
            vec!["parameter limit must be an integer from 1 to 100"],
        ),
    ];
    for (action, params, fragments) in &cases {
        let answer = send_signed(&client, request(&app, action, params)).await;
        let case = format!("{action} {:?}", params.iter().take(4).collect::<Vec<_>>());
        assert_refused(&answer, 4000, "InvalidParameter", fragments, &case);
    }

    // The limit itself is not refused: 100 IDs that do not exist are each answered.
    let answer = send_signed(&client, request(&app, "StartInstances", &many_refs[..100])).await;
    assert_refused(
        &answer,
        5100,
        "OperationFailed",
        &["failed for every resource"],
        "100 unknown ids",
    );
    let detail = answer["detail"].as_object().expect("a detail object");
    assert_eq!(detail.len(), 100, "{answer}");
    for id in &many[..100] {
        assert_eq!(detail[id]["code"], 5000, "{id}: {answer}");
        let expected = format!("instance {id} does not exist");
        assert_eq!(detail[id]["message"], expected.as_str(), "{answer}");
    }
}

#[tokio::test]
async fn undecodable_forms_are_refused_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let base = || {
        signed(
            &client,
            request(&app, "DescribeInstances", &[("limit", "1")]),
        )
        .encode()
    };
    // (form, message fragment)
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{}&limit=2", base()),
            "parameter limit is given more than once",
        ),
        (
            format!("{}&Nonce=5", base()),
            "parameter Nonce is given more than once",
        ),
        (
            format!(
                "{}&instanceIds.0=ins-aaaaaaaa&instanceIds_0=ins-aaaaaaaa",
                base()
            ),
            "parameter instanceIds.0 is given more than once",
        ),
        (
            format!("{}&searchWord=%FF", base()),
            "parameter searchWord is not valid UTF-8 text",
        ),
        (
            format!("{}&searchWord=%C3%28", base()),
            "parameter searchWord is not valid UTF-8 text",
        ),
    ];
    for (form, fragment) in &cases {
        let answer = send(&client, form.clone()).await;
        assert_refused(&answer, 4000, "InvalidParameter", &[fragment], form);
    }
}

// ---------------------------------------------------------------------------------
// 4104: unknown or disabled SecretId

#[tokio::test]
async fn an_unknown_secret_id_is_refused() {
    let app = TestApp::spawn().await;
    let unknown = "AKIDunknown0000000000000000000000000";
    let client = app.client_for(
        unknown,
        &app.secret_key,
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );
    let answer = client
        .call("DescribeInstances", [("limit", "1")])
        .await
        .unwrap();
    assert_refused(
        &answer,
        4104,
        "InvalidSecretId",
        &[&format!("SecretId {unknown} does not exist or is disabled")],
        "unknown SecretId",
    );
}

#[tokio::test]
async fn a_key_disabled_with_the_cli_is_refused_until_enabled_again() {
    let app = TestApp::spawn().await;
    let (id, key) = app.create_key("default");
    let client = app.client_for(&id, &key, HttpMethod::Post, SignatureMethod::HmacSha1);
    let describe = || async {
        client
            .call("DescribeInstances", [("limit", "1")])
            .await
            .unwrap()
    };
    assert_ok(&describe().await, "a new key, before disabling");

    let out = qtask_keys(&app, &["disable", &id]);
    assert!(out.contains(&format!("Disabled {id}")), "{out}");
    let listing = qtask_keys(&app, &["list"]);
    let line = listing
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {listing}"));
    assert!(line.contains("disabled"), "{listing}");
    assert_refused(
        &describe().await,
        4104,
        "InvalidSecretId",
        &[&format!("SecretId {id} does not exist or is disabled")],
        "the disabled key",
    );
    // Other keys of the same account are not affected.
    assert_ok(
        &app.call("DescribeInstances", &[("limit", "1")]).await,
        "the account's other key",
    );

    let out = qtask_keys(&app, &["enable", &id]);
    assert!(out.contains(&format!("Enabled {id}")), "{out}");
    assert_ok(&describe().await, "the key enabled again");
}

// ---------------------------------------------------------------------------------
// 4100: the signature does not verify

#[tokio::test]
async fn signatures_that_do_not_match_are_refused() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let describe = || request(&app, "DescribeInstances", &[("limit", "1")]);
    let key = app.secret_key.as_bytes();
    let mut cases: Vec<(&str, String)> = Vec::new();

    // Signed with a wrong key.
    let wrong = app.client_for(
        &app.secret_id,
        "not-the-right-key",
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );
    cases.push(("wrong key", signed(&wrong, describe()).encode()));

    // A value changed after signing.
    let mut tampered = signed(&client, describe());
    tampered.set("limit", "2");
    cases.push(("value changed after signing", tampered.encode()));

    // A parameter added after signing.
    let mut added = signed(&client, describe());
    added.set("offset", "0");
    cases.push(("parameter added after signing", added.encode()));

    // Signed for another host.
    let mut other_host = describe();
    other_host.set("SignatureMethod", "HmacSHA256");
    let message = string_to_sign(HttpMethod::Get, "cvm.api.qcloud.com", API_PATH, &other_host);
    other_host.set(
        "Signature",
        sign(SignatureMethod::HmacSha256, key, message.as_bytes()),
    );
    cases.push(("signed for another host", other_host.encode()));

    // Signed as POST, sent as GET.
    let mut other_method = describe();
    other_method.set("SignatureMethod", "HmacSHA256");
    let message = string_to_sign(HttpMethod::Post, client.host(), API_PATH, &other_method);
    other_method.set(
        "Signature",
        sign(SignatureMethod::HmacSha256, key, message.as_bytes()),
    );
    cases.push(("signed as POST", other_method.encode()));

    // HMAC-SHA1 computed but HmacSHA256 claimed.
    let mut other_hmac = describe();
    other_hmac.set("SignatureMethod", "HmacSHA256");
    let message = string_to_sign(HttpMethod::Get, client.host(), API_PATH, &other_hmac);
    other_hmac.set(
        "Signature",
        sign(SignatureMethod::HmacSha1, key, message.as_bytes()),
    );
    cases.push(("SHA1 signature, SHA256 claimed", other_hmac.encode()));

    // Not base64 at all.
    let mut garbage = signed(&client, describe());
    garbage.set("Signature", "not base64!");
    cases.push(("garbage signature", garbage.encode()));

    let expected_source = format!(
        "expected HmacSHA256 over \"GET{}{API_PATH}?\"",
        client.host()
    );
    for (case, form) in cases {
        let answer = send(&client, form).await;
        assert_refused(
            &answer,
            4100,
            "AuthFailure",
            &["the signature does not match", &expected_source],
            case,
        );
    }
}

// ---------------------------------------------------------------------------------
// 4200: Timestamp too far from the server's clock

#[tokio::test]
async fn timestamps_outside_the_window_are_refused() {
    for (args, window) in [
        (vec!["--sim-speed", "0"], 300i64),
        (vec!["--sim-speed", "0", "--timestamp-window", "10"], 10),
    ] {
        let app = TestApp::spawn_with(&args).await;
        let client = app.client();
        // (seconds from now, accepted)
        let cases = [
            (-(window + 1), false),
            (window + 1, false),
            (-(window - 1), true),
            (window - 1, true),
            (-100_000, false),
        ];
        for (offset, accepted) in cases {
            let now = start_of_a_second().await as i64;
            let timestamp = (now + offset).to_string();
            let params = request(&app, "DescribeInstances", &[("Timestamp", &timestamp)]);
            let answer = send_signed(&client, params).await;
            let case = format!("window {window}, Timestamp now{offset:+}");
            if accepted {
                assert_ok(&answer, &case);
            } else {
                assert_refused(
                    &answer,
                    4200,
                    "RequestExpired",
                    &[
                        &format!("Timestamp {timestamp} is {} s", offset.abs()),
                        &format!("requests must be within {window} s"),
                    ],
                    &case,
                );
            }
        }
        // The ends of the range are refused as expired, not as malformed.
        for timestamp in ["0", "9223372036854775807"] {
            let params = request(&app, "DescribeInstances", &[("Timestamp", timestamp)]);
            assert_refused(
                &send_signed(&client, params).await,
                4200,
                "RequestExpired",
                &[
                    &format!("Timestamp {timestamp} is"),
                    &format!("requests must be within {window} s"),
                ],
                &format!("window {window}, Timestamp {timestamp}"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// 4500: a nonce used again for another request

#[tokio::test]
async fn a_nonce_reused_for_another_request_is_a_replay() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let nonce = fresh_nonce().to_string();
    let with_nonce = |action: &str, extra: &[(&str, &str)]| -> Params {
        let mut params = request(&app, action, extra);
        params.set("Nonce", nonce.clone());
        params
    };
    let answer = send_signed(&client, with_nonce("DescribeInstances", &[("limit", "1")])).await;
    assert_ok(&answer, "the first use");

    let replays = [
        ("DescribeInstances", vec![("limit", "2")]),
        ("DescribeTasks", vec![]),
        ("RunInstances", vec![("instanceName", "replayed")]),
    ];
    for (action, extra) in &replays {
        let answer = send_signed(&client, with_nonce(action, extra)).await;
        assert_refused(
            &answer,
            4500,
            "NonceReplayed",
            &["the Nonce was already used by this SecretId for another request"],
            &format!("{action} with a used nonce"),
        );
    }
    // The refused RunInstances created nothing.
    let answer = app.call("DescribeInstances", &[]).await;
    assert_eq!(count(&answer), 0, "{answer}");

    // Nonces belong to a SecretId: another key may use the same number.
    let (id, key) = app.create_key("other");
    let other = app.client_for(&id, &key, HttpMethod::Get, SignatureMethod::HmacSha256);
    let mut params = request_as(&id, "DescribeInstances", &[("limit", "1")]);
    params.set("Nonce", nonce.clone());
    assert_ok(&send_signed(&other, params).await, "same nonce, other key");
}

#[tokio::test]
async fn an_identical_resend_of_a_mutating_call_gets_the_first_answer_byte_for_byte() {
    let mut app = TestApp::spawn().await;
    let client = app.client();
    let nonce = fresh_nonce().to_string();
    let params = request(
        &app,
        "RunInstances",
        &[("instanceName", "resent"), ("Nonce", &nonce)],
    );
    let url = api_url(&app, &signed(&client, params).encode());
    let http = raw_http();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let response = http.get(&url).send().await.expect("an answer");
        assert_eq!(response.status(), 200);
        bodies.push(response.bytes().await.expect("a body"));
    }
    assert_eq!(
        bodies[0],
        bodies[1],
        "the resend's answer differs: {:?} vs {:?}",
        String::from_utf8_lossy(&bodies[0]),
        String::from_utf8_lossy(&bodies[1])
    );
    let answer: Value = serde_json::from_slice(&bodies[0]).expect("JSON");
    assert_ok(&answer, "RunInstances");
    assert_eq!(answer["message"], "", "{answer}");
    let ids = answer["instanceIds"].as_array().expect("instanceIds");
    assert_eq!(ids.len(), 1, "{answer}");
    let data = app
        .wait_final(answer["requestId"].as_str().expect("a requestId"))
        .await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    let listing = app.call("DescribeInstances", &[]).await;
    assert_eq!(
        count(&listing),
        1,
        "the resend created another instance: {listing}"
    );
    assert_eq!(listing["instanceSet"][0]["instanceId"], ids[0], "{listing}");

    // The nonce is kept in the store: after a restart it is still refused.
    let status = app.terminate();
    assert!(status.success(), "qtask exited with {status}");
    app.restart(None);
    let client = app.client();
    let params = request(
        &app,
        "RunInstances",
        &[("instanceName", "after-restart"), ("Nonce", &nonce)],
    );
    let answer = send_signed(&client, params).await;
    assert_refused(
        &answer,
        4500,
        "NonceReplayed",
        &["the Nonce was already used by this SecretId for another request"],
        "the nonce after a restart",
    );
    let listing = app.call("DescribeInstances", &[]).await;
    assert_eq!(count(&listing), 1, "{listing}");
}

#[tokio::test]
async fn an_identical_resend_of_a_query_is_answered_afresh() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let url = api_url(
        &app,
        &signed(&client, request(&app, "DescribeInstances", &[])).encode(),
    );
    let http = raw_http();
    let first: Value =
        serde_json::from_str(&http.get(&url).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_ok(&first, "the first DescribeInstances");
    assert_eq!(count(&first), 0, "{first}");
    let ids = app.create_instances(1, "between").await;
    let again: Value =
        serde_json::from_str(&http.get(&url).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_ok(&again, "the identical resend");
    assert_eq!(count(&again), 1, "the resend was not run again: {again}");
    assert_eq!(
        again["instanceSet"][0]["instanceId"],
        ids[0].as_str(),
        "{again}"
    );
}

// ---------------------------------------------------------------------------------
// 6100: unknown action

#[tokio::test]
async fn an_unknown_action_is_named() {
    let app = TestApp::spawn().await;
    for action in ["FlyToTheMoon", "describeInstances", "DescribeInstance"] {
        let answer = app.call(action, &[]).await;
        assert_refused(
            &answer,
            6100,
            "UnsupportedAction",
            &[&format!("the action {action} does not exist")],
            action,
        );
    }
}

// ---------------------------------------------------------------------------------
// What the legacy clients send, accepted

#[tokio::test]
async fn get_and_post_with_both_signature_methods_are_accepted() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(1, "combos").await;
    let id = ids[0].as_str();
    let combos = [
        (HttpMethod::Get, SignatureMethod::HmacSha1),
        (HttpMethod::Get, SignatureMethod::HmacSha256),
        (HttpMethod::Post, SignatureMethod::HmacSha1),
        (HttpMethod::Post, SignatureMethod::HmacSha256),
    ];
    for (method, signature_method) in combos {
        let case = format!("{}/{signature_method}", method.as_str());
        let client = app.client_with(method, signature_method);
        let answer = client
            .call("DescribeInstances", [("instanceIds.0", id)])
            .await
            .unwrap();
        assert_ok(&answer, &case);
        assert_eq!(
            answer["instanceSet"][0]["instanceId"], id,
            "{case}: {answer}"
        );

        // A mutating call whose value needs every kind of encoding.
        let name = format!("{case} a+b&c=d %41 café 🚀");
        let answer = client
            .call(
                "ModifyInstanceAttributes",
                [("instanceId", id), ("instanceName", name.as_str())],
            )
            .await
            .unwrap();
        assert_ok(&answer, &case);
        let data = app.wait_final(answer["requestId"].as_str().unwrap()).await;
        assert_eq!(data["state"], "SUCCESS", "{case}: {data}");
        assert_eq!(
            app.instance(id).await["instanceName"],
            name.as_str(),
            "{case}"
        );
    }
}

#[tokio::test]
async fn underscores_in_names_stand_for_dots() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(2, "underscore").await;
    for method in [HttpMethod::Get, HttpMethod::Post] {
        let client = app.client_with(method, SignatureMethod::HmacSha1);
        // Signed with dots (as the clients sign), sent with underscores.
        let params = signed(
            &client,
            request(
                &app,
                "DescribeInstances",
                &[("instanceIds.0", &ids[0]), ("instanceIds.1", &ids[1])],
            ),
        );
        let wire: Vec<(String, String)> = pairs(&params)
            .into_iter()
            .map(|(n, v)| (n.replace('.', "_"), v))
            .collect();
        let form = encode(&wire);
        assert!(
            form.contains("instanceIds_0=") && !form.contains("instanceIds.0"),
            "{form}"
        );
        let answer = send(&client, form).await;
        assert_ok(&answer, "instanceIds_0");
        assert_eq!(count(&answer), 2, "{answer}");

        // A chain too, which names each entry as instanceIds.N.
        let params = signed(
            &client,
            request(
                &app,
                "StopInstances",
                &[("instanceIds.0", &ids[0]), ("instanceIds.1", "bogus")],
            ),
        );
        let wire: Vec<(String, String)> = pairs(&params)
            .into_iter()
            .map(|(n, v)| (n.replace('.', "_"), v))
            .collect();
        let answer = send(&client, encode(&wire)).await;
        assert_refused(
            &answer,
            4000,
            "InvalidParameter",
            &["parameter instanceIds.1 must look like ins-xxxxxxxx"],
            "instanceIds_1=bogus",
        );
    }
}

#[tokio::test]
async fn a_post_value_starting_with_at_is_left_out_of_the_signature() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(1, "at-sign").await;
    let id = ids[0].as_str();
    let client = app.client_with(HttpMethod::Post, SignatureMethod::HmacSha256);

    // The SDK way: the string to sign has every parameter but the `@` one.
    let mut signing = request(&app, "ModifyInstanceAttributes", &[("instanceId", id)]);
    signing.set("SignatureMethod", "HmacSHA256");
    let message = string_to_sign(HttpMethod::Post, client.host(), API_PATH, &signing);
    // The shared signing code follows the same convention.
    let mut with_at = signing.clone();
    with_at.set("instanceName", "@home");
    assert_eq!(
        string_to_sign(HttpMethod::Post, client.host(), API_PATH, &with_at),
        message
    );
    let signature = sign(
        SignatureMethod::HmacSha256,
        app.secret_key.as_bytes(),
        message.as_bytes(),
    );
    let mut wire = pairs(&signing);
    wire.push(("instanceName".into(), "@home".into()));
    wire.push(("Signature".into(), signature));
    let answer = send(&client, encode(&wire)).await;
    assert_ok(&answer, "POST instanceName=@home");
    let data = app.wait_final(answer["requestId"].as_str().unwrap()).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    assert_eq!(app.instance(id).await["instanceName"], "@home");

    // On GET such a value is signed like any other.
    let client = app.client_with(HttpMethod::Get, SignatureMethod::HmacSha1);
    let answer = client
        .call(
            "ModifyInstanceAttributes",
            [("instanceId", id), ("instanceName", "@work")],
        )
        .await
        .unwrap();
    assert_ok(&answer, "GET instanceName=@work");
    let data = app.wait_final(answer["requestId"].as_str().unwrap()).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    assert_eq!(app.instance(id).await["instanceName"], "@work");
}

#[tokio::test]
async fn optional_common_parameters_are_accepted_and_signed() {
    let app = TestApp::spawn().await;
    let client = app.client_with(HttpMethod::Post, SignatureMethod::HmacSha1);
    let cases = [
        ("RequestClient", "SDK_PYTHON_2.0.15"),
        ("RequestSource", "qcloudcli"),
        ("Version", "2017-03-12"),
        ("Token", "temporary-token-value"),
    ];
    for (name, value) in cases {
        let params = request(&app, "DescribeInstances", &[(name, value)]);
        assert_ok(&send_signed(&client, params).await, name);

        // It is part of the signature: changing it afterwards breaks the request.
        let mut tampered = signed(
            &client,
            request(&app, "DescribeInstances", &[(name, value)]),
        );
        tampered.set(name, format!("{value}x"));
        assert_refused(
            &send(&client, tampered.encode()).await,
            4100,
            "AuthFailure",
            &["the signature does not match", name],
            &format!("{name} changed after signing"),
        );
    }
    // All of them at once, as the CLI and SDK would add them.
    let params = request(&app, "DescribeInstances", &cases);
    assert_ok(
        &send_signed(&client, params).await,
        "all optional parameters",
    );
}

#[tokio::test]
async fn a_legacy_region_code_names_the_same_region() {
    let app = TestApp::spawn().await;
    let long = app.create_instances(1, "made-in-ap-guangzhou").await;
    let answer = app
        .call(
            "RunInstances",
            &[("Region", "gz"), ("instanceName", "made-in-gz")],
        )
        .await;
    assert_ok(&answer, "RunInstances in gz");
    let data = app.wait_final(answer["requestId"].as_str().unwrap()).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    let short = answer["instanceIds"][0].as_str().unwrap().to_owned();

    let listing = |region: &'static str| {
        let app = &app;
        async move {
            let answer = app.call("DescribeInstances", &[("Region", region)]).await;
            assert_ok(&answer, region);
            let mut ids: Vec<String> = answer["instanceSet"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["instanceId"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![long[0].clone(), short.clone()];
    both.sort();
    assert_eq!(listing("gz").await, both);
    assert_eq!(listing("ap-guangzhou").await, both);
    assert_eq!(listing("sh").await, Vec::<String>::new());
    assert_eq!(listing("ap-shanghai").await, Vec::<String>::new());

    let instance = app.instance(&short).await;
    assert!(
        instance["zoneId"]
            .as_str()
            .is_some_and(|z| z.starts_with("ap-guangzhou-")),
        "{instance}"
    );
}

#[tokio::test]
async fn https_with_the_generated_ca_works() {
    let app = TestApp::spawn().await;
    let client = app.https_client();
    let answer = client
        .call("RunInstances", [("instanceName", "over-tls")])
        .await
        .expect("an HTTPS answer");
    assert_ok(&answer, "RunInstances over HTTPS");
    let data = app.wait_final(answer["requestId"].as_str().unwrap()).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    let answer = client
        .call("DescribeInstances", [("searchWord", "over-tls")])
        .await
        .expect("an HTTPS answer");
    assert_ok(&answer, "DescribeInstances over HTTPS");
    assert_eq!(count(&answer), 1, "{answer}");

    // A client that does not trust the generated CA cannot connect.
    let untrusting = Client::new(ClientConfig {
        ca_file: None,
        ..client.config().clone()
    })
    .unwrap();
    match untrusting.call("DescribeInstances", [("limit", "1")]).await {
        Err(ClientError::Unreachable { .. }) => {}
        other => panic!("a client without the CA got {other:?}"),
    }
}

/// `--tls-cert`/`--tls-key` serve the operator's certificate and generate nothing.
#[tokio::test]
async fn https_with_the_operators_own_certificate() {
    // A first server generates a CA and a certificate: they stand in for the operator's.
    let issuer = TestApp::spawn().await;
    let tls = issuer.data_dir.join("tls");
    let (cert, key) = (tls.join("server.crt"), tls.join("server.key"));
    let app = TestApp::spawn_with(&[
        "--sim-speed",
        "0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert!(
        !app.data_dir.join("tls").exists(),
        "a certificate was generated although one was given"
    );
    let client = Client::new(ClientConfig {
        endpoint: format!("https://{}", app.https),
        secret_id: app.secret_id.clone(),
        secret_key: app.secret_key.clone(),
        region: "ap-guangzhou".into(),
        method: HttpMethod::Post,
        signature_method: SignatureMethod::HmacSha256,
        ca_file: Some(issuer.ca_file()),
    })
    .unwrap();
    let answer = client
        .call("DescribeInstances", [("limit", "1")])
        .await
        .expect("an HTTPS answer");
    assert_ok(&answer, "DescribeInstances over the operator's certificate");
}

#[tokio::test]
async fn only_the_api_path_answers_every_request_with_http_200() {
    let app = TestApp::spawn().await;
    let http = raw_http();
    let base = format!("http://{}", app.http);
    // (method, path, body, expected status)
    let cases = [
        ("GET", "/nope", "", 404),
        ("GET", "/v2/other.php", "", 404),
        ("GET", "/v2/index.php/extra", "", 404),
        ("PUT", API_PATH, "Action=DescribeInstances", 405),
        ("DELETE", API_PATH, "", 405),
        ("PATCH", API_PATH, "", 405),
    ];
    for (method, path, body, status) in cases {
        let response = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
    }

    // The API path answers 200 with a JSON code, whatever the request.
    // (method, query, body, message fragment)
    let cases = [
        ("GET", "", "", "parameter SecretId is required"),
        ("GET", "a=%FF", "", "parameter a is not valid UTF-8 text"),
        ("POST", "", "", "parameter SecretId is required"),
        ("POST", "", "x=1&x=2", "parameter x is given more than once"),
        (
            "POST",
            "",
            "SecretId=AKIDx",
            "parameter Signature is required",
        ),
    ];
    for (method, query, body, fragment) in cases {
        let response = http
            .request(method.parse().unwrap(), format!("{base}{API_PATH}?{query}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let case = format!("{method} ?{query} {body}");
        assert_eq!(response.status().as_u16(), 200, "{case}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{case}: {content_type}"
        );
        let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_refused(&answer, 4000, "InvalidParameter", &[fragment], &case);
    }
}

// ---------------------------------------------------------------------------------
// The order of the checks

#[tokio::test]
async fn with_several_problems_the_first_check_in_order_answers() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let wrong_key = app.client_for(
        &app.secret_id,
        "not-the-right-key",
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );
    let unknown_key = app.client_for(
        "AKIDunknown0000000000000000000000000",
        "whatever",
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );
    let used_nonce = fresh_nonce().to_string();
    let first = request(&app, "DescribeInstances", &[("Nonce", &used_nonce)]);
    assert_ok(&send_signed(&client, first).await, "the nonce's first use");
    let expired = (unix_seconds() - 1000).to_string();
    let unknown_id = "AKIDunknown0000000000000000000000000";

    // Check order: decoding, required common parameters, SignatureMethod, key,
    // signature, timestamp, region, action, action parameters, nonce.
    // (case, signer, action, parameters, code, message fragment)
    let cases = vec![
        (
            "missing Nonce before an unknown key",
            &unknown_key,
            "DescribeInstances",
            vec![("SecretId", unknown_id), ("Nonce", "")],
            4000,
            "parameter Nonce is required",
        ),
        (
            "missing Nonce before a bad SignatureMethod",
            &client,
            "DescribeInstances",
            vec![("Nonce", ""), ("SignatureMethod", "HmacMD5")],
            4000,
            "parameter Nonce is required",
        ),
        (
            "bad SignatureMethod before an unknown key",
            &unknown_key,
            "DescribeInstances",
            vec![("SecretId", unknown_id), ("SignatureMethod", "HmacMD5")],
            4000,
            "SignatureMethod must be HmacSHA1 or HmacSHA256",
        ),
        (
            "unknown key before a bad signature and an old timestamp",
            &wrong_key,
            "DescribeInstances",
            vec![("SecretId", unknown_id), ("Timestamp", &expired)],
            4104,
            "does not exist or is disabled",
        ),
        (
            "bad signature before an old timestamp and an unknown region",
            &wrong_key,
            "DescribeInstances",
            vec![("Timestamp", &expired), ("Region", "mars")],
            4100,
            "the signature does not match",
        ),
        (
            "old timestamp before an unknown region and action",
            &client,
            "FlyToTheMoon",
            vec![("Timestamp", &expired), ("Region", "mars")],
            4200,
            "requests must be within 300 s",
        ),
        (
            "unknown region before an unknown action",
            &client,
            "FlyToTheMoon",
            vec![("Region", "mars")],
            4000,
            "parameter Region \"mars\" is not a known region",
        ),
        (
            "unknown action before an unknown parameter",
            &client,
            "FlyToTheMoon",
            vec![("foo", "1"), ("Nonce", &used_nonce)],
            6100,
            "the action FlyToTheMoon does not exist",
        ),
        (
            "unknown parameter before a used nonce",
            &client,
            "DescribeInstances",
            vec![("foo", "1"), ("Nonce", &used_nonce)],
            4000,
            "parameter foo is not a parameter of DescribeInstances",
        ),
        (
            "bad parameter value before a used nonce",
            &client,
            "StartInstances",
            vec![("instanceIds.0", "bogus"), ("Nonce", &used_nonce)],
            4000,
            "parameter instanceIds.0 must look like ins-",
        ),
        (
            "the used nonce alone",
            &client,
            "DescribeInstances",
            vec![("limit", "3"), ("Nonce", &used_nonce)],
            4500,
            "the Nonce was already used",
        ),
    ];
    // Every case runs; the failures are reported together.
    let mut wrong = Vec::new();
    for (case, signer, action, extra, code, fragment) in cases {
        let params = request(&app, action, &extra);
        let answer = send_signed(signer, params).await;
        let message = answer["message"].as_str().unwrap_or_default();
        if answer["code"] != code || !message.contains(fragment) {
            wrong.push(format!(
                "{case}: expected {code} with {fragment:?}, got {answer}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Decoding comes first: a duplicate parameter beside a missing SecretId.
    let mut params = signed(
        &client,
        request(&app, "DescribeInstances", &[("limit", "1")]),
    );
    params.set("SecretId", "");
    let answer = send(&client, format!("{}&limit=2", params.encode())).await;
    assert_refused(
        &answer,
        4000,
        "InvalidParameter",
        &["parameter limit is given more than once"],
        "duplicate parameter before a missing one",
    );
}

#[tokio::test]
async fn a_request_refused_before_the_nonce_check_does_not_use_up_its_nonce() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let nonce = fresh_nonce().to_string();
    let refused = [
        ("DescribeInstances", vec![("limitt", "1")], 4000),
        ("FlyToTheMoon", vec![], 6100),
        ("StartInstances", vec![("instanceIds.0", "bogus")], 4000),
    ];
    for (action, extra, code) in &refused {
        let mut params = request(&app, action, extra);
        params.set("Nonce", nonce.clone());
        let answer = send_signed(&client, params).await;
        assert_eq!(answer["code"], *code, "{action}: {answer}");
    }
    let mut params = request(&app, "DescribeInstances", &[]);
    params.set("Nonce", nonce.clone());
    assert_ok(
        &send_signed(&client, params).await,
        "the nonce after refusals",
    );
}

#[tokio::test]
async fn oversized_requests_are_refused_with_4000_naming_the_limit() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let huge = format!(
        "Action=DescribeInstances&pad={}",
        "x".repeat(2 * 1024 * 1024)
    );
    // The body is left partly unread, so the answer closes the connection: a client
    // that pooled it would lose its next request to a broken pipe.
    let refused = reqwest::Client::new()
        .post(format!("http://{}/v2/index.php", app.http))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(huge.clone())
        .send()
        .await
        .expect("HTTP 200 with an envelope, not 413");
    assert_eq!(refused.status(), 200);
    assert_eq!(refused.headers()["connection"], "close");
    let answer = client
        .send_form(HttpMethod::Post, huge)
        .await
        .expect("HTTP 200 with an envelope, not 413");
    assert_eq!(answer["code"], 4000, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("larger than 1048576 bytes"),
        "{answer}"
    );
    let many: String = (0..1001).map(|i| format!("p{i}=1&")).collect();
    let answer = client.send_form(HttpMethod::Post, many).await.unwrap();
    assert_eq!(answer["code"], 4000, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("1001 parameters; at most 1000"),
        "{answer}"
    );
}

// ---------------------------------------------------------------------------------
// Several nodes: nonces are the cluster's, not a node's

/// Two nodes on one PostgreSQL schema, addressed by one host name (as behind a load
/// balancer): a signed request resent unchanged to the other node gets the first answer
/// byte for byte and creates nothing more; its nonce used there for another request is a
/// replay. Needs `QTASK_TEST_DATABASE_URL` (scripts/test sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_nonce_is_spent_on_every_node() {
    let cluster = tokio::task::block_in_place(|| {
        crate::helpers::Cluster::start(2, &["--sim-speed", "0", "--workers", "1"])
    });
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let client = a.client();
    // Every request is signed for A's host; B is reached with that Host header.
    let via = |node: &TestApp, params: Params| {
        let url = api_url(node, &signed(&client, params).encode());
        let host = a.http.to_string();
        async move {
            let response = raw_http()
                .get(&url)
                .header(reqwest::header::HOST, host)
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("a body")
        }
    };
    let nonce = fresh_nonce().to_string();
    let run = request(
        a,
        "RunInstances",
        &[("instanceName", "once"), ("Nonce", &nonce)],
    );
    let first = via(a, run.clone()).await;
    let first_json: Value = serde_json::from_slice(&first).expect("JSON");
    assert_ok(&first_json, "the first use, on A");
    assert_eq!(
        via(b, run).await,
        first,
        "the resend to B: A's answer, byte for byte"
    );

    let other = request(a, "DescribeInstances", &[("Nonce", &nonce)]);
    let answer: Value = serde_json::from_slice(&via(b, other).await).expect("JSON");
    assert_refused(
        &answer,
        4500,
        "NonceReplayed",
        &["the Nonce was already used by this SecretId for another request"],
        "the nonce used on B for another request",
    );
    let listed = b.call("DescribeInstances", &[]).await;
    assert_eq!(count(&listed), 1, "the resend created nothing: {listed}");
}
