//! Tasks on the real server: chain and general answers, the states an instance shows
//! while its task runs, refusals, account and region isolation, injected failures,
//! DescribeTasks, clientToken and the handling of passwords.

use crate::helpers::{chain, detail_task, slow_app, text, TestApp};
use qtask::client::unix_seconds;
use qtask_protocol::signature::{HttpMethod, SignatureMethod};
use serde_json::Value;

/// A well-formed instance ID no account owns.
const NOWHERE: &str = "ins-zzzzzzzz";
/// A password that must never come back out of the server.
const CANARY: &str = "Qt@sk-Canary-91x";

/// Parameters as name/value pairs.
type Pairs<'a> = &'a [(&'a str, &'a str)];

/// Checks an instance right after a task on it was accepted: it shows the transitional
/// state, is busy with the task, and its latest operation is that unfinished task.
fn assert_in_transition(instance: &Value, action: &str, task: &str, state: &str, status: u64) {
    assert_eq!(instance["statusName"], state, "after {action}: {instance}");
    assert_eq!(instance["status"], status, "after {action}: {instance}");
    assert_eq!(instance["busyWith"], task, "after {action}: {instance}");
    let latest = &instance["latestOperation"];
    assert_eq!(latest["action"], action, "{instance}");
    assert_eq!(latest["requestId"], task, "{instance}");
    assert!(
        latest["state"] == "QUEUED" || latest["state"] == "RUNNING",
        "latest operation of an unfinished task: {instance}"
    );
    assert_eq!(latest["status"], 2, "{instance}");
}

/// Checks an instance after its task succeeded.
fn assert_settled(instance: &Value, action: &str, task: &str, state: &str, status: u64) {
    assert_eq!(instance["statusName"], state, "after {action}: {instance}");
    assert_eq!(instance["status"], status, "after {action}: {instance}");
    assert_eq!(
        instance["busyWith"],
        Value::Null,
        "after {action}: {instance}"
    );
    let latest = &instance["latestOperation"];
    assert_eq!(latest["action"], action, "{instance}");
    assert_eq!(latest["requestId"], task, "{instance}");
    assert_eq!(latest["state"], "SUCCESS", "{instance}");
    assert_eq!(latest["status"], 0, "{instance}");
    assert!(latest.get("error").is_none(), "{instance}");
}

#[tokio::test]
async fn a_chain_of_valid_ids_succeeds_and_every_task_result_name_describes_it() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(3, "web").await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();

    let answer = chain(&app, "StopInstances", &refs, &[]).await;
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["message"], "success", "{answer}");
    assert_eq!(answer["codeDesc"], "Success", "{answer}");
    let chain_id = text(&answer["requestId"]).to_owned();
    assert!(chain_id.parse::<u64>().is_ok(), "{answer}");
    let detail = answer["detail"].as_object().expect("a detail object");
    assert_eq!(detail.len(), 3, "{answer}");
    let mut tasks = Vec::new();
    for id in &ids {
        assert_eq!(answer["detail"][id]["message"], "", "{answer}");
        tasks.push(detail_task(&answer, id));
    }
    let mut distinct = tasks.clone();
    distinct.push(chain_id.clone());
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "chain and task IDs are distinct: {answer}"
    );

    let data = app.wait_final(&chain_id).await;
    assert_eq!(data["requestId"], chain_id.as_str(), "{data}");
    assert_eq!(data["status"], 0, "{data}");
    assert_eq!(data["state"], "SUCCESS", "{data}");
    assert_eq!(data["action"], "StopInstances", "{data}");
    assert_eq!(data["taskCount"], 3, "{data}");
    assert_eq!(
        data["taskStates"],
        serde_json::json!({"QUEUED": 0, "RUNNING": 0, "SUCCESS": 3, "FAILED": 0, "CANCELED": 0}),
        "{data}"
    );
    assert!(data["endTime"].is_string(), "{data}");
    let views = data["tasks"].as_array().expect("a task list");
    assert_eq!(views.len(), 3, "{data}");
    for (id, task) in ids.iter().zip(&tasks) {
        let view = views
            .iter()
            .find(|v| v["resourceId"] == id.as_str())
            .unwrap_or_else(|| panic!("no task for {id} in {data}"));
        assert_eq!(view["requestId"], task.as_str(), "{data}");
        assert_eq!(view["chainId"], chain_id.as_str(), "{data}");
        assert_eq!(view["action"], "StopInstances", "{data}");
        assert_eq!(view["state"], "SUCCESS", "{data}");
        assert_eq!(view["status"], 0, "{data}");
        assert_eq!(view["region"], "ap-guangzhou", "{data}");
        assert_eq!(view["attempts"], 1, "{data}");
        assert!(view["endTime"].is_string(), "{data}");

        // One task alone is described the same way.
        let single = app.call("DescribeTaskResult", &[("requestId", task)]).await;
        assert_eq!(single["code"], 0, "{single}");
        assert_eq!(&single["data"], view, "task {task} alone");
        assert_eq!(app.instance(id).await["statusName"], "STOPPED");
    }

    // The legacy products' names answer exactly the same.
    for (action, param) in [
        ("DescribeLoadBalancersTaskResult", "requestId"),
        ("DescribeBmLoadBalancersTaskResult", "requestId"),
        ("DescribeVpcTaskResult", "taskId"),
    ] {
        let other = app.call(action, &[(param, &chain_id)]).await;
        assert_eq!(other["code"], 0, "{action}: {other}");
        assert_eq!(
            other["data"], data,
            "{action} describes the chain as DescribeTaskResult does"
        );
        let single = app.call(action, &[(param, &tasks[0])]).await;
        assert_eq!(single["code"], 0, "{action}: {single}");
        assert_eq!(
            single["data"]["requestId"],
            tasks[0].as_str(),
            "{action}: {single}"
        );
        assert_eq!(
            single["data"]["chainId"],
            chain_id.as_str(),
            "{action}: {single}"
        );
    }
}

#[tokio::test]
async fn a_chain_of_mixed_ids_is_a_partial_success_with_a_reason_per_id() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(2, "web").await;
    let (stopped, running) = (ids[0].as_str(), ids[1].as_str());
    let stop = chain(&app, "StopInstances", &[stopped], &[]).await;
    app.wait_final(text(&stop["requestId"])).await;
    app.wait_instance_state(stopped, "STOPPED").await;

    let answer = chain(&app, "StartInstances", &[stopped, running, NOWHERE], &[]).await;
    assert_eq!(answer["code"], 5400, "{answer}");
    assert_eq!(answer["codeDesc"], "PartialSuccess", "{answer}");
    let chain_id = text(&answer["requestId"]).to_owned();
    let task = detail_task(&answer, stopped);
    assert_eq!(answer["detail"][stopped]["message"], "", "{answer}");
    assert_eq!(
        answer["detail"][running],
        serde_json::json!({
            "code": 5100,
            "message": format!("instance {running} is RUNNING; StartInstances needs it to be STOPPED"),
            "requestId": "",
        }),
        "{answer}"
    );
    assert_eq!(
        answer["detail"][NOWHERE],
        serde_json::json!({
            "code": 5000,
            "message": format!("instance {NOWHERE} does not exist"),
            "requestId": "",
        }),
        "{answer}"
    );

    // The chain holds only the accepted task.
    let data = app.wait_final(&chain_id).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    assert_eq!(data["taskCount"], 1, "{data}");
    assert_eq!(data["tasks"][0]["requestId"], task.as_str(), "{data}");
    assert_eq!(data["tasks"][0]["resourceId"], stopped, "{data}");
    assert_eq!(app.instance(stopped).await["statusName"], "RUNNING");
    assert_eq!(app.instance(running).await["statusName"], "RUNNING");
}

#[tokio::test]
async fn a_chain_of_only_invalid_ids_is_refused_without_a_request_id() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(1, "web").await;
    let running = ids[0].as_str();

    // A precondition: a running instance cannot be started; the detail says why.
    let answer = chain(&app, "StartInstances", &[running, NOWHERE], &[]).await;
    assert_eq!(answer["code"], 5100, "{answer}");
    assert_eq!(answer["codeDesc"], "OperationFailed", "{answer}");
    assert!(
        answer.get("requestId").is_none(),
        "no chain was created: {answer}"
    );
    assert_eq!(answer["detail"][running]["code"], 5100, "{answer}");
    assert_eq!(
        answer["detail"][running]["message"],
        format!("instance {running} is RUNNING; StartInstances needs it to be STOPPED"),
        "{answer}"
    );
    assert_eq!(answer["detail"][running]["requestId"], "", "{answer}");
    assert_eq!(answer["detail"][NOWHERE]["code"], 5000, "{answer}");
    assert_eq!(answer["detail"][NOWHERE]["requestId"], "", "{answer}");

    // Nothing was queued for the refused instance.
    let tasks = app.call("DescribeTasks", &[("resourceId", running)]).await;
    assert_eq!(
        tasks["totalCount"], 1,
        "only its RunInstances task: {tasks}"
    );
    assert_eq!(tasks["taskSet"][0]["action"], "RunInstances", "{tasks}");
}

/// One step of an instance's life: the call, the state it shows while the task runs
/// (`None`: unchanged) and the state it ends in.
struct Step {
    action: &'static str,
    chain: bool,
    params: &'static [(&'static str, &'static str)],
    during: Option<(&'static str, u64)>,
    after: (&'static str, u64),
}

#[tokio::test]
async fn instance_states_follow_their_tasks() {
    let (app, ids) = slow_app("0.2", &["web"]).await;
    let id = ids[0].as_str();
    let steps = [
        Step {
            action: "StopInstances",
            chain: true,
            params: &[],
            during: Some(("STOPPING", 9)),
            after: ("STOPPED", 4),
        },
        Step {
            action: "StartInstances",
            chain: true,
            params: &[],
            during: Some(("STARTING", 8)),
            after: ("RUNNING", 2),
        },
        Step {
            action: "RestartInstances",
            chain: true,
            params: &[],
            during: Some(("REBOOTING", 7)),
            after: ("RUNNING", 2),
        },
        Step {
            action: "ResetInstancePassword",
            chain: true,
            params: &[("password", "Another-Pass1")],
            during: Some(("RESETTING_PASSWORD", 10)),
            after: ("RUNNING", 2),
        },
        Step {
            action: "StopInstances",
            chain: true,
            params: &[("forceStop", "1")],
            during: Some(("STOPPING", 9)),
            after: ("STOPPED", 4),
        },
        // A password reset returns to the state before it, here STOPPED.
        Step {
            action: "ResetInstancePassword",
            chain: true,
            params: &[("password", "Another-Pass2")],
            during: Some(("RESETTING_PASSWORD", 10)),
            after: ("STOPPED", 4),
        },
        Step {
            action: "ModifyInstanceAttributes",
            chain: false,
            params: &[("instanceName", "db")],
            during: None,
            after: ("STOPPED", 4),
        },
        Step {
            action: "ResetInstances",
            chain: false,
            params: &[("imageId", "img-eb30mz89")],
            during: Some(("REINSTALLING", 14)),
            after: ("RUNNING", 2),
        },
        Step {
            action: "ReturnInstance",
            chain: false,
            params: &[],
            during: Some(("RETURNING", 6)),
            after: ("RETURNED", 5),
        },
    ];
    for step in &steps {
        let (answer, wait_id, task) = if step.chain {
            let answer = chain(&app, step.action, &[id], step.params).await;
            assert_eq!(answer["code"], 0, "{}: {answer}", step.action);
            let task = detail_task(&answer, id);
            let wait_id = text(&answer["requestId"]).to_owned();
            (answer, wait_id, task)
        } else {
            let mut params = vec![("instanceId", id)];
            params.extend_from_slice(step.params);
            let answer = app.call(step.action, &params).await;
            assert_eq!(answer["code"], 0, "{}: {answer}", step.action);
            assert!(answer.get("detail").is_none(), "a general answer: {answer}");
            let task = text(&answer["requestId"]).to_owned();
            (answer, task.clone(), task)
        };
        if let Some((state, status)) = step.during {
            let instance = app.instance(id).await;
            assert_in_transition(&instance, step.action, &task, state, status);
        }
        let data = app.wait_final(&wait_id).await;
        assert_eq!(
            data["state"], "SUCCESS",
            "{}: {answer} then {data}",
            step.action
        );
        let instance = app.instance(id).await;
        assert_settled(&instance, step.action, &task, step.after.0, step.after.1);
        match step.action {
            "ModifyInstanceAttributes" => assert_eq!(instance["instanceName"], "db", "{instance}"),
            "ResetInstances" => {
                assert_eq!(instance["imageId"], "img-eb30mz89", "{instance}");
                assert_eq!(instance["os"], "Debian 12.0 64bit", "{instance}");
            }
            _ => {}
        }
    }

    // A returned instance refuses every operation.
    let refusals: [(&str, bool, Pairs); 7] = [
        ("StartInstances", true, &[]),
        ("StopInstances", true, &[]),
        ("RestartInstances", true, &[]),
        (
            "ResetInstancePassword",
            true,
            &[("password", "Another-Pass3")],
        ),
        ("ResetInstances", false, &[]),
        ("ReturnInstance", false, &[]),
        (
            "ModifyInstanceAttributes",
            false,
            &[("instanceName", "again")],
        ),
    ];
    for (action, is_chain, params) in refusals {
        let (code, message) = if is_chain {
            let answer = chain(&app, action, &[id], params).await;
            assert_eq!(answer["code"], 5100, "{action}: {answer}");
            assert!(answer.get("requestId").is_none(), "{action}: {answer}");
            (
                answer["detail"][id]["code"].clone(),
                answer["detail"][id]["message"].clone(),
            )
        } else {
            let mut all = vec![("instanceId", id)];
            all.extend_from_slice(params);
            let answer = app.call(action, &all).await;
            assert!(answer.get("requestId").is_none(), "{action}: {answer}");
            (answer["code"].clone(), answer["message"].clone())
        };
        assert_eq!(code, 5100, "{action} on a returned instance: {message}");
        let message = text(&message);
        assert!(
            message.contains(id) && message.contains("RETURNED"),
            "{action}: {message}"
        );
    }
    let instance = app.instance(id).await;
    assert_eq!(instance["statusName"], "RETURNED", "{instance}");
    assert_eq!(instance["instanceName"], "db", "{instance}");
}

#[tokio::test]
async fn run_instances_creates_pending_instances_that_start_running_with_defaults() {
    let app = TestApp::spawn_with(&["--sim-speed", "0.2"]).await;
    let answer = app.call("RunInstances", &[("goodsNum", "3")]).await;
    assert_eq!(answer["code"], 0, "{answer}");
    let group = text(&answer["requestId"]).to_owned();
    let ids: Vec<String> = answer["instanceIds"]
        .as_array()
        .expect("instanceIds")
        .iter()
        .map(|id| text(id).to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{answer}");
    for id in &ids {
        let suffix = id.strip_prefix("ins-").unwrap_or_else(|| panic!("{id}"));
        assert!(
            suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{answer}");

    let mut tasks = Vec::new();
    for id in &ids {
        let instance = app.instance(id).await;
        let task = text(&instance["busyWith"]).to_owned();
        assert_in_transition(&instance, "RunInstances", &task, "PENDING", 3);
        tasks.push(task);
    }
    let data = app.wait_final(&group).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    assert_eq!(data["action"], "RunInstances", "{data}");
    assert_eq!(data["taskCount"], 3, "{data}");
    for (id, task) in ids.iter().zip(&tasks) {
        let instance = app.instance(id).await;
        assert_settled(&instance, "RunInstances", task, "RUNNING", 2);
        assert_eq!(instance["zoneId"], "ap-guangzhou-1", "{instance}");
        assert_eq!(instance["region"], "ap-guangzhou", "{instance}");
        assert_eq!(instance["cpu"], 1, "{instance}");
        assert_eq!(instance["mem"], 2, "{instance}");
        assert_eq!(instance["imageId"], "img-22trbn9x", "{instance}");
        assert_eq!(
            instance["os"], "Ubuntu Server 22.04 LTS 64bit",
            "{instance}"
        );
        let lan_ip: std::net::Ipv4Addr = text(&instance["lanIp"]).parse().expect("an IPv4 lanIp");
        assert_eq!(lan_ip.octets()[0], 10, "{instance}");
        assert!(
            data["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["requestId"] == task.as_str() && t["resourceId"] == id.as_str()),
            "{data}"
        );
    }
    let all = app.call("DescribeInstances", &[]).await;
    assert_eq!(all["totalCount"], 3, "{all}");
}

#[tokio::test]
async fn an_instance_with_an_unfinished_task_refuses_another_operation() {
    let (app, ids) = slow_app("0.5", &["a", "b"]).await;
    let (busy, free) = (ids[0].as_str(), ids[1].as_str());
    let stop = chain(&app, "StopInstances", &[busy], &[]).await;
    let task = detail_task(&stop, busy);

    let expected = |action: &str| {
        format!("instance {busy} has an unfinished task {task} (StopInstances); {action} can run when it ends")
    };
    // A general call: the outer code says it. (ModifyInstanceAttributes would wait its
    // turn instead: its policy queues; see the engine tests.)
    let give_back = app.call("ReturnInstance", &[("instanceId", busy)]).await;
    assert_eq!(give_back["code"], 5100, "{give_back}");
    assert_eq!(
        give_back["message"],
        expected("ReturnInstance"),
        "{give_back}"
    );
    assert!(give_back.get("requestId").is_none(), "{give_back}");
    // A chain: the detail says it, the other instance goes ahead.
    let restart = chain(&app, "RestartInstances", &[busy, free], &[]).await;
    assert_eq!(restart["code"], 5400, "{restart}");
    assert_eq!(restart["detail"][busy]["code"], 5100, "{restart}");
    assert_eq!(
        restart["detail"][busy]["message"],
        expected("RestartInstances"),
        "{restart}"
    );
    assert_eq!(restart["detail"][busy]["requestId"], "", "{restart}");
    detail_task(&restart, free);
    // Even an operation the transitional state would allow later is refused, not queued.
    let again = chain(&app, "StopInstances", &[busy], &[]).await;
    assert_eq!(again["code"], 5100, "{again}");
    assert_eq!(
        again["detail"][busy]["message"],
        expected("StopInstances"),
        "{again}"
    );

    let tasks = app.call("DescribeTasks", &[("resourceId", busy)]).await;
    assert_eq!(
        tasks["totalCount"], 2,
        "RunInstances and the one StopInstances: {tasks}"
    );
    app.wait_final(text(&stop["requestId"])).await;
    let instance = app.wait_instance_state(busy, "STOPPED").await;
    assert_eq!(
        instance["statusName"], "STOPPED",
        "the refused return did not happen: {instance}"
    );
}

/// The same call for a real ID and for [`NOWHERE`] must answer the same, up to the ID.
async fn assert_like_nowhere(
    client: &qtask::client::Client,
    action: &str,
    build: impl Fn(&str) -> Vec<(String, String)>,
    real: &str,
) {
    let seen = client.call(action, build(real)).await.expect("an answer");
    let unseen = client
        .call(action, build(NOWHERE))
        .await
        .expect("an answer");
    let code = if seen.get("detail").is_some() {
        &seen["detail"][real]["code"]
    } else {
        &seen["code"]
    };
    assert_eq!(code, 5000, "{action} {real}: {seen}");
    assert_eq!(
        seen.to_string().replace(real, NOWHERE),
        unseen.to_string(),
        "{action}: another account's {real} looks exactly like a nonexistent ID"
    );
}

#[tokio::test]
async fn another_account_sees_none_of_the_first_accounts_instances_or_tasks() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(2, "mine").await;
    let (running, stopped) = (ids[0].as_str(), ids[1].as_str());
    let stop = chain(&app, "StopInstances", &[stopped], &[]).await;
    let chain_id = text(&stop["requestId"]).to_owned();
    let task = detail_task(&stop, stopped);
    app.wait_final(&chain_id).await;

    let (other_id, other_key) = app.create_key("other");
    assert_ne!(other_id, app.secret_id);
    let other = app.client_for(
        &other_id,
        &other_key,
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );

    let listing = TestApp::call_with(&other, "DescribeInstances", &[]).await;
    assert_eq!(listing["code"], 0, "{listing}");
    assert_eq!(listing["totalCount"], 0, "{listing}");
    assert_eq!(listing["instanceSet"], serde_json::json!([]), "{listing}");
    let by_id =
        TestApp::call_with(&other, "DescribeInstances", &[("instanceIds.0", running)]).await;
    assert_eq!(by_id["totalCount"], 0, "{by_id}");
    let tasks = TestApp::call_with(&other, "DescribeTasks", &[]).await;
    assert_eq!(tasks["code"], 0, "{tasks}");
    assert_eq!(tasks["totalCount"], 0, "{tasks}");
    assert_eq!(tasks["taskSet"], serde_json::json!([]), "{tasks}");
    let by_resource = TestApp::call_with(&other, "DescribeTasks", &[("resourceId", running)]).await;
    assert_eq!(by_resource["totalCount"], 0, "{by_resource}");

    // (action, a chain?, its other parameters, the instance it names)
    let calls: [(&str, bool, Pairs, &str); 7] = [
        ("StopInstances", true, &[], running),
        ("RestartInstances", true, &[], running),
        ("StartInstances", true, &[], stopped),
        (
            "ResetInstancePassword",
            true,
            &[("password", "Another-Pass1")],
            running,
        ),
        (
            "ModifyInstanceAttributes",
            false,
            &[("instanceName", "theirs")],
            running,
        ),
        ("ResetInstances", false, &[], stopped),
        ("ReturnInstance", false, &[], running),
    ];
    for (action, is_chain, extra, real) in calls {
        let name = if is_chain {
            "instanceIds"
        } else {
            "instanceId"
        };
        let build = |id: &str| {
            let mut params = vec![(
                if is_chain {
                    format!("{name}.0")
                } else {
                    name.to_owned()
                },
                id.to_owned(),
            )];
            params.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
            params
        };
        assert_like_nowhere(&other, action, build, real).await;
    }
    let nowhere_task = "987654";
    for (action, param) in [
        ("DescribeTaskResult", "requestId"),
        ("DescribeLoadBalancersTaskResult", "requestId"),
        ("DescribeBmLoadBalancersTaskResult", "requestId"),
        ("DescribeVpcTaskResult", "taskId"),
    ] {
        let unseen = TestApp::call_with(&other, action, &[(param, nowhere_task)]).await;
        assert_eq!(unseen["code"], 5000, "{action}: {unseen}");
        for id in [&chain_id, &task] {
            let seen = TestApp::call_with(&other, action, &[(param, id)]).await;
            assert_eq!(
                seen.to_string()
                    .replace(&format!("task {id} "), &format!("task {nowhere_task} ")),
                unseen.to_string(),
                "{action} {id}: another account's task looks exactly like a nonexistent one"
            );
        }
    }

    // The other account's own instance is its alone.
    let theirs = TestApp::call_with(&other, "RunInstances", &[("instanceName", "theirs")]).await;
    assert_eq!(theirs["code"], 0, "{theirs}");
    let their_group = text(&theirs["requestId"]).to_owned();
    let their_id = text(&theirs["instanceIds"][0]).to_owned();
    let mine = app.call("DescribeInstances", &[]).await;
    assert_eq!(mine["totalCount"], 2, "{mine}");
    let lookup = app
        .call("DescribeTaskResult", &[("requestId", &their_group)])
        .await;
    assert_eq!(lookup["code"], 5000, "{lookup}");
    let mine_by_id = app
        .call("DescribeInstances", &[("instanceIds.0", &their_id)])
        .await;
    assert_eq!(mine_by_id["totalCount"], 0, "{mine_by_id}");

    // Nothing the other account tried changed the first account's instances.
    let first = app.instance(running).await;
    assert_eq!(first["statusName"], "RUNNING", "{first}");
    assert_eq!(first["instanceName"], "mine", "{first}");
    assert_eq!(app.instance(stopped).await["statusName"], "STOPPED");
}

#[tokio::test]
async fn a_region_does_not_see_another_regions_instances() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(1, "gz").await;
    let id = ids[0].as_str();
    let shanghai = [("Region", "ap-shanghai")];

    let listing = app.call("DescribeInstances", &shanghai).await;
    assert_eq!(listing["code"], 0, "{listing}");
    assert_eq!(listing["totalCount"], 0, "{listing}");
    let by_id = app
        .call(
            "DescribeInstances",
            &[("Region", "ap-shanghai"), ("instanceIds.0", id)],
        )
        .await;
    assert_eq!(by_id["totalCount"], 0, "{by_id}");
    let stop = chain(&app, "StopInstances", &[id], &shanghai).await;
    assert_eq!(stop["code"], 5100, "{stop}");
    assert_eq!(stop["detail"][id]["code"], 5000, "{stop}");
    assert_eq!(
        stop["detail"][id]["message"],
        format!("instance {id} does not exist"),
        "{stop}"
    );
    let modify = app
        .call(
            "ModifyInstanceAttributes",
            &[
                ("Region", "ap-shanghai"),
                ("instanceId", id),
                ("instanceName", "sh"),
            ],
        )
        .await;
    assert_eq!(modify["code"], 5000, "{modify}");
    assert_eq!(
        modify["message"],
        format!("instance {id} does not exist"),
        "{modify}"
    );

    // An instance created in Shanghai lives there, in a Shanghai zone.
    let created = app
        .call(
            "RunInstances",
            &[("Region", "ap-shanghai"), ("instanceName", "sh")],
        )
        .await;
    assert_eq!(created["code"], 0, "{created}");
    app.wait_final(text(&created["requestId"])).await;
    let sh_listing = app.call("DescribeInstances", &shanghai).await;
    assert_eq!(sh_listing["totalCount"], 1, "{sh_listing}");
    assert_eq!(
        sh_listing["instanceSet"][0]["instanceId"], created["instanceIds"][0],
        "{sh_listing}"
    );
    assert_eq!(
        sh_listing["instanceSet"][0]["zoneId"], "ap-shanghai-1",
        "{sh_listing}"
    );
    // Guangzhou, by its full or short name, still sees only its own.
    for region in ["ap-guangzhou", "gz"] {
        let gz = app.call("DescribeInstances", &[("Region", region)]).await;
        assert_eq!(gz["totalCount"], 1, "{region}: {gz}");
        assert_eq!(gz["instanceSet"][0]["instanceId"], id, "{region}: {gz}");
    }
    assert_eq!(app.instance(id).await["instanceName"], "gz");
}

/// Checks that a finished task failed with a simulated fault.
fn assert_simulated_fault(task: &Value) {
    assert_eq!(task["state"], "FAILED", "{task}");
    assert_eq!(task["status"], 1, "{task}");
    assert_eq!(task["error"]["code"], 5100, "{task}");
    assert!(
        text(&task["error"]["message"]).contains("simulated fault"),
        "{task}"
    );
}

#[tokio::test]
async fn a_fault_marker_in_the_name_fails_that_action_and_restores_the_state() {
    let app = TestApp::spawn().await;
    let ids = app
        .create_instances(1, "web qtask-fail:StopInstances")
        .await;
    let id = ids[0].as_str();
    let answer = chain(&app, "StopInstances", &[id], &[]).await;
    assert_eq!(
        answer["code"], 0,
        "the failure comes from the task, not the call: {answer}"
    );
    let task = detail_task(&answer, id);
    let data = app.wait_final(text(&answer["requestId"])).await;
    assert_eq!(data["state"], "FAILED", "{data}");
    assert_eq!(data["status"], 1, "{data}");
    assert_eq!(data["taskStates"]["FAILED"], 1, "{data}");
    assert_simulated_fault(&data["tasks"][0]);
    let single = app
        .call("DescribeTaskResult", &[("requestId", &task)])
        .await;
    assert_simulated_fault(&single["data"]);

    let instance = app.instance(id).await;
    assert_eq!(
        instance["statusName"], "RUNNING",
        "back to the prior state: {instance}"
    );
    assert_eq!(instance["status"], 2, "{instance}");
    assert_eq!(instance["busyWith"], Value::Null, "{instance}");
    let latest = &instance["latestOperation"];
    assert_eq!(latest["action"], "StopInstances", "{instance}");
    assert_eq!(latest["requestId"], task.as_str(), "{instance}");
    assert_eq!(latest["state"], "FAILED", "{instance}");
    assert_eq!(latest["status"], 1, "{instance}");
    assert_eq!(latest["error"], single["data"]["error"], "{instance}");

    // Only the marked action fails.
    let restart = chain(&app, "RestartInstances", &[id], &[]).await;
    let restarted = app.wait_final(text(&restart["requestId"])).await;
    assert_eq!(restarted["state"], "SUCCESS", "{restarted}");
}

#[tokio::test]
async fn a_fault_marker_for_run_instances_leaves_them_launch_failed() {
    let app = TestApp::spawn().await;
    let answer = app
        .call(
            "RunInstances",
            &[
                ("goodsNum", "2"),
                ("instanceName", "db qtask-fail:RunInstances"),
            ],
        )
        .await;
    assert_eq!(answer["code"], 0, "{answer}");
    let data = app.wait_final(text(&answer["requestId"])).await;
    assert_eq!(data["state"], "FAILED", "{data}");
    assert_eq!(data["taskStates"]["FAILED"], 2, "{data}");
    for task in data["tasks"].as_array().unwrap() {
        assert_simulated_fault(task);
    }
    for id in answer["instanceIds"].as_array().unwrap() {
        let instance = app.instance(text(id)).await;
        assert_eq!(instance["statusName"], "LAUNCH_FAILED", "{instance}");
        assert_eq!(instance["status"], 1, "{instance}");
        assert_eq!(instance["latestOperation"]["state"], "FAILED", "{instance}");
    }
}

#[tokio::test]
async fn a_failure_rate_of_one_in_the_config_file_fails_every_start() {
    let config_dir = tempfile::tempdir().expect("a temporary directory");
    let config = config_dir.path().join("qtask.toml");
    std::fs::write(&config, "[sim_failure_rates]\nStartInstances = 1.0\n")
        .expect("the config file is written");
    let app =
        TestApp::spawn_with(&["--sim-speed", "0", "--config", config.to_str().unwrap()]).await;
    let ids = app.create_instances(3, "web").await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let stop = chain(&app, "StopInstances", &refs, &[]).await;
    assert_eq!(
        app.wait_final(text(&stop["requestId"])).await["state"],
        "SUCCESS"
    );

    for round in 0..2 {
        let start = chain(&app, "StartInstances", &refs, &[]).await;
        assert_eq!(start["code"], 0, "round {round}: {start}");
        let data = app.wait_final(text(&start["requestId"])).await;
        assert_eq!(data["state"], "FAILED", "round {round}: {data}");
        assert_eq!(data["taskStates"]["FAILED"], 3, "round {round}: {data}");
        for task in data["tasks"].as_array().unwrap() {
            assert_simulated_fault(task);
        }
        for id in &refs {
            assert_eq!(
                app.instance(id).await["statusName"],
                "STOPPED",
                "round {round}"
            );
        }
    }
}

/// Request IDs of a DescribeTasks answer, in order.
fn task_ids(answer: &Value) -> Vec<u64> {
    assert_eq!(answer["code"], 0, "{answer}");
    answer["taskSet"]
        .as_array()
        .unwrap_or_else(|| panic!("a taskSet: {answer}"))
        .iter()
        .map(|t| text(&t["requestId"]).parse().expect("a numeric request ID"))
        .collect()
}

#[tokio::test]
async fn describe_tasks_filters_and_pages() {
    let app = TestApp::spawn().await;
    let before = unix_seconds();
    let ids = app.create_instances(3, "web").await; // 3 RunInstances tasks
    let flaky = app.create_instances(1, "qtask-fail:RestartInstances").await; // 1 more
    let stop = chain(&app, "StopInstances", &[&ids[0], &ids[1]], &[]).await; // 2 StopInstances
    app.wait_final(text(&stop["requestId"])).await;
    let restart = chain(&app, "RestartInstances", &[&flaky[0]], &[]).await; // 1 FAILED
    app.wait_final(text(&restart["requestId"])).await;
    let after = unix_seconds();

    let all = app.call("DescribeTasks", &[("limit", "100")]).await;
    let all_ids = task_ids(&all);
    assert_eq!(all["totalCount"], 7, "{all}");
    assert_eq!(all_ids.len(), 7, "{all}");
    assert!(
        all_ids.windows(2).all(|w| w[0] > w[1]),
        "newest first: {all_ids:?}"
    );
    let default_page = app.call("DescribeTasks", &[]).await;
    assert_eq!(
        task_ids(&default_page),
        all_ids,
        "the default limit (20) holds all 7"
    );

    // (filters, expected totalCount)
    let before_text = before.to_string();
    let after_text = (after + 1).to_string();
    let long_ago = (before - 3600).to_string();
    let cases: Vec<(Vec<(&str, &str)>, u64)> = vec![
        (vec![("status", "SUCCESS")], 6),
        (vec![("status", "FAILED")], 1),
        (vec![("status", "SUCCESS,FAILED")], 7),
        (vec![("status", "QUEUED,RUNNING")], 0),
        (vec![("action", "StopInstances")], 2),
        (vec![("action", "RunInstances")], 4),
        (
            vec![("action", "RestartInstances"), ("status", "FAILED")],
            1,
        ),
        (
            vec![("action", "RestartInstances"), ("status", "SUCCESS")],
            0,
        ),
        (vec![("action", "NoSuchAction")], 0),
        (vec![("resourceId", &ids[0])], 2),
        (vec![("resourceId", &ids[2])], 1),
        (
            vec![("resourceId", &ids[0]), ("action", "StopInstances")],
            1,
        ),
        (vec![("resourceId", "ins-zzzzzzzz")], 0),
        (vec![("startTime", &before_text)], 7),
        (vec![("startTime", &after_text)], 0),
        (vec![("endTime", &long_ago)], 0),
        (vec![("startTime", &long_ago), ("endTime", &after_text)], 7),
        (
            vec![
                ("startTime", "2000-01-01 00:00:00"),
                ("endTime", "2000-01-02 00:00:00"),
            ],
            0,
        ),
        (vec![("startTime", "2000-01-01 00:00:00")], 7),
    ];
    for (filters, expected) in cases {
        let answer = app.call("DescribeTasks", &filters).await;
        let found = task_ids(&answer);
        assert_eq!(answer["totalCount"], expected, "{filters:?}: {answer}");
        assert_eq!(found.len() as u64, expected, "{filters:?}: {answer}");
        let mut expected_order = found.clone();
        expected_order.sort_by(|a, b| b.cmp(a));
        assert_eq!(found, expected_order, "newest first for {filters:?}");
        for task in answer["taskSet"].as_array().unwrap() {
            for (name, value) in &filters {
                match *name {
                    "status" => assert!(
                        value.split(',').any(|s| task["state"] == s),
                        "{filters:?}: {task}"
                    ),
                    "action" => assert_eq!(task["action"], *value, "{filters:?}: {task}"),
                    "resourceId" => assert_eq!(task["resourceId"], *value, "{filters:?}: {task}"),
                    _ => {}
                }
            }
        }
    }

    // Pages: each shows the right slice of the full list, with the full totalCount.
    for (offset, limit) in [(0, 1), (0, 3), (3, 3), (6, 3), (5, 100), (7, 5), (100, 1)] {
        let (offset_text, limit_text) = (offset.to_string(), limit.to_string());
        let page = app
            .call(
                "DescribeTasks",
                &[("offset", &offset_text), ("limit", &limit_text)],
            )
            .await;
        assert_eq!(
            page["totalCount"], 7,
            "offset {offset} limit {limit}: {page}"
        );
        let expected: Vec<u64> = all_ids.iter().copied().skip(offset).take(limit).collect();
        assert_eq!(task_ids(&page), expected, "offset {offset} limit {limit}");
    }

    // Bad filters name the parameter.
    for (name, value) in [
        ("limit", "101"),
        ("limit", "0"),
        ("offset", "-1"),
        ("status", "DONE"),
        ("startTime", "yesterday"),
        ("endTime", "2026-13-45 99:00:00"),
    ] {
        let answer = app.call("DescribeTasks", &[(name, value)]).await;
        assert_eq!(answer["code"], 4000, "{name}={value}: {answer}");
        assert!(
            text(&answer["message"]).starts_with(&format!("parameter {name} ")),
            "{name}={value}: {answer}"
        );
    }
}

#[tokio::test]
async fn describe_tasks_time_filters_include_the_second_a_task_shows() {
    let app = TestApp::spawn().await;
    app.create_instances(1, "web").await;
    let all = app.call("DescribeTasks", &[]).await;
    assert_eq!(all["totalCount"], 1, "{all}");
    let created = text(&all["taskSet"][0]["createTime"]).to_owned();
    // A client that filters by the createTime it was shown finds the task, from either end.
    for filters in [
        vec![("startTime", created.as_str())],
        vec![("endTime", created.as_str())],
        vec![
            ("startTime", created.as_str()),
            ("endTime", created.as_str()),
        ],
    ] {
        let answer = app.call("DescribeTasks", &filters).await;
        assert_eq!(answer["totalCount"], 1, "{filters:?}: {answer}");
    }
}

#[tokio::test]
async fn a_client_token_replays_the_first_answer_and_creates_nothing_new() {
    let app = TestApp::spawn().await;
    let params = [
        ("goodsNum", "2"),
        ("instanceName", "tok"),
        ("clientToken", "run-7f3a"),
    ];
    let first = app.call("RunInstances", &params).await;
    assert_eq!(first["code"], 0, "{first}");
    app.wait_final(text(&first["requestId"])).await;
    // A new request (fresh Nonce and Timestamp) with the same token and parameters.
    let second = app.call("RunInstances", &params).await;
    assert_eq!(
        second.to_string(),
        first.to_string(),
        "the replay is the first answer"
    );
    let listing = app.call("DescribeInstances", &[]).await;
    assert_eq!(
        listing["totalCount"], 2,
        "only goodsNum instances exist: {listing}"
    );
    let tasks = app.call("DescribeTasks", &[]).await;
    assert_eq!(tasks["totalCount"], 2, "{tasks}");

    // The same token with other parameters is refused.
    for changed in [
        vec![
            ("goodsNum", "3"),
            ("instanceName", "tok"),
            ("clientToken", "run-7f3a"),
        ],
        vec![
            ("goodsNum", "2"),
            ("instanceName", "other"),
            ("clientToken", "run-7f3a"),
        ],
    ] {
        let answer = app.call("RunInstances", &changed).await;
        assert_eq!(answer["code"], 4000, "{changed:?}: {answer}");
        assert!(text(&answer["message"]).contains("clientToken"), "{answer}");
    }
    assert_eq!(app.call("DescribeInstances", &[]).await["totalCount"], 2);

    // A chain replays too, although the instances are no longer RUNNING.
    let id = text(&first["instanceIds"][0]).to_owned();
    let stop = chain(&app, "StopInstances", &[&id], &[("clientToken", "stop-1")]).await;
    assert_eq!(stop["code"], 0, "{stop}");
    app.wait_final(text(&stop["requestId"])).await;
    let replay = chain(&app, "StopInstances", &[&id], &[("clientToken", "stop-1")]).await;
    assert_eq!(
        replay.to_string(),
        stop.to_string(),
        "the chain's replay is its first answer"
    );
    let without = chain(&app, "StopInstances", &[&id], &[]).await;
    assert_eq!(
        without["code"], 5100,
        "without the token it is a new request: {without}"
    );
}

#[tokio::test]
async fn passwords_never_appear_in_answers_or_in_the_database() {
    let app = TestApp::spawn_on_sqlite(&["--sim-speed", "0"]).await;
    let run = app
        .call("RunInstances", &[("goodsNum", "2"), ("password", CANARY)])
        .await;
    assert_eq!(run["code"], 0, "{run}");
    app.wait_final(text(&run["requestId"])).await;
    let ids: Vec<String> = run["instanceIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| text(v).to_owned())
        .collect();
    let reset_password = chain(
        &app,
        "ResetInstancePassword",
        &[&ids[0], &ids[1]],
        &[("password", CANARY)],
    )
    .await;
    assert_eq!(reset_password["code"], 0, "{reset_password}");
    app.wait_final(text(&reset_password["requestId"])).await;
    let reinstall = app
        .call(
            "ResetInstances",
            &[("instanceId", &ids[0]), ("password", CANARY)],
        )
        .await;
    assert_eq!(reinstall["code"], 0, "{reinstall}");
    app.wait_final(text(&reinstall["requestId"])).await;

    let mut answers = vec![run.clone(), reset_password.clone(), reinstall.clone()];
    answers.push(app.call("DescribeInstances", &[]).await);
    answers.push(app.call("DescribeTasks", &[("limit", "100")]).await);
    let mut request_ids: Vec<String> = vec![
        text(&run["requestId"]).to_owned(),
        text(&reset_password["requestId"]).to_owned(),
        text(&reinstall["requestId"]).to_owned(),
    ];
    for task in answers[4]["taskSet"].as_array().unwrap() {
        request_ids.push(text(&task["requestId"]).to_owned());
    }
    assert_eq!(request_ids.len(), 3 + 5, "{}", answers[4]);
    for id in &request_ids {
        answers.push(app.call("DescribeTaskResult", &[("requestId", id)]).await);
        answers.push(app.call("DescribeVpcTaskResult", &[("taskId", id)]).await);
    }
    for answer in &answers {
        assert_eq!(answer["code"], 0, "{answer}");
        assert!(
            !answer.to_string().contains(CANARY),
            "an answer holds the password: {answer}"
        );
    }
    for line in app.output.lock().unwrap().iter() {
        assert!(
            !line.contains(CANARY),
            "the server printed the password: {line}"
        );
    }

    let database = app.data_dir.join("qtask.db");
    let mut files = vec![database.clone()];
    let wal = app.data_dir.join("qtask.db-wal");
    if wal.exists() {
        files.push(wal);
    }
    for file in files {
        let bytes =
            std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        assert!(!bytes.is_empty(), "{} is empty", file.display());
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "{} holds the password in clear",
            file.display()
        );
    }
}

#[tokio::test]
async fn invalid_parameters_are_refused_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(1, "web").await;
    let id = ids[0].as_str();
    let long_name = "n".repeat(61);
    let weak = "abcdefgh";
    // (action, parameters, the parameter the message must name)
    let cases: [(&str, Pairs, &str); 17] = [
        ("RunInstances", &[("goodsNum", "0")], "goodsNum"),
        ("RunInstances", &[("goodsNum", "101")], "goodsNum"),
        ("RunInstances", &[("goodsNum", "two")], "goodsNum"),
        ("RunInstances", &[("zoneId", "ap-shanghai-1")], "zoneId"),
        ("RunInstances", &[("zoneId", "ap-guangzhou")], "zoneId"),
        ("RunInstances", &[("imageId", "img-00000000")], "imageId"),
        ("RunInstances", &[("password", weak)], "password"),
        ("RunInstances", &[("password", "Sh0rt!")], "password"),
        ("RunInstances", &[("cpu", "0")], "cpu"),
        (
            "RunInstances",
            &[("instanceName", &long_name)],
            "instanceName",
        ),
        (
            "ResetInstancePassword",
            &[("instanceIds.0", id), ("password", weak)],
            "password",
        ),
        (
            "ResetInstancePassword",
            &[("instanceIds.0", id)],
            "password",
        ),
        (
            "ResetInstances",
            &[("instanceId", id), ("imageId", "img-00000000")],
            "imageId",
        ),
        (
            "ResetInstances",
            &[("instanceId", id), ("password", weak)],
            "password",
        ),
        (
            "ModifyInstanceAttributes",
            &[("instanceId", id), ("instanceName", &long_name)],
            "instanceName",
        ),
        (
            "ModifyInstanceAttributes",
            &[("instanceId", id)],
            "instanceName",
        ),
        ("DescribeTaskResult", &[("requestId", "abc")], "requestId"),
    ];
    for (action, params, param) in cases {
        let answer = app.call(action, params).await;
        assert_eq!(answer["code"], 4000, "{action} {params:?}: {answer}");
        assert_eq!(
            answer["codeDesc"], "InvalidParameter",
            "{action} {params:?}: {answer}"
        );
        let message = text(&answer["message"]);
        assert!(
            message.starts_with(&format!("parameter {param} ")),
            "{action} {params:?}: {message}"
        );
        assert!(
            !message.contains(weak),
            "the message repeats the password: {message}"
        );
    }
    // None of them created or changed anything.
    let listing = app.call("DescribeInstances", &[]).await;
    assert_eq!(listing["totalCount"], 1, "{listing}");
    assert_eq!(
        listing["instanceSet"][0]["instanceName"], "web",
        "{listing}"
    );
    assert_eq!(
        listing["instanceSet"][0]["statusName"], "RUNNING",
        "{listing}"
    );
    assert_eq!(app.call("DescribeTasks", &[]).await["totalCount"], 1);
}
