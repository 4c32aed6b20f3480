//! The built-in load-balancer catalog on the real server: backends as merges, their
//! instances' state (a returned instance stays registered, shown as returned), and the
//! refusals of the `backends.N.*` parameters. The whole flow through the legacy SDK is
//! in `tests/sdk/sdk_e2e.py`.

use crate::helpers::{text, TestApp};
use serde_json::Value;

pub async fn create_lb(app: &TestApp, name: &str) -> String {
    let answer = app
        .call("CreateLoadBalancer", &[("loadBalancerName", name)])
        .await;
    assert_eq!(answer["code"], 0, "{answer}");
    app.wait_final(text(&answer["requestId"])).await;
    text(&answer["unLoadBalancerIds"][0]).to_owned()
}

async fn backends(app: &TestApp, lb: &str) -> Value {
    let answer = app
        .call("DescribeLoadBalancerBackends", &[("loadBalancerId", lb)])
        .await;
    assert_eq!(answer["code"], 0, "{answer}");
    answer
}

#[tokio::test]
async fn a_returned_backend_stays_registered_and_shows_returned() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(2, "web").await;
    let lb = create_lb(&app, "front").await;
    let register = app
        .call(
            "RegisterInstancesWithLoadBalancer",
            &[
                ("loadBalancerId", &lb),
                ("backends.0.instanceId", &ids[0]),
                ("backends.1.instanceId", &ids[1]),
                ("backends.1.weight", "30"),
            ],
        )
        .await;
    assert_eq!(register["code"], 0, "{register}");
    app.wait_final(text(&register["requestId"])).await;
    let listed = backends(&app, &lb).await;
    assert_eq!(listed["totalCount"], 2, "{listed}");
    let weights: Vec<&Value> = listed["backendSet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["weight"])
        .collect();
    assert!(
        weights.contains(&&Value::from(10)),
        "the default weight: {listed}"
    );
    assert!(weights.contains(&&Value::from(30)), "{listed}");

    let give_back = app.call("ReturnInstance", &[("instanceId", &ids[0])]).await;
    app.wait_final(text(&give_back["requestId"])).await;
    let after = backends(&app, &lb).await;
    let returned = after["backendSet"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["instanceId"] == ids[0].as_str())
        .expect("still registered")
        .clone();
    assert_eq!(returned["runFlag"], 5, "{returned}");
    assert_eq!(returned["instanceStatusName"], "RETURNED", "{returned}");

    let by_name = app
        .call("DescribeLoadBalancers", &[("loadBalancerName", "front")])
        .await;
    assert_eq!(by_name["totalCount"], 1, "{by_name}");
    assert_eq!(by_name["loadBalancerSet"][0]["loadBalancerId"], lb.as_str());
    let unknown = app
        .call(
            "DescribeLoadBalancerBackends",
            &[("loadBalancerId", "lb-zzzzzzzz")],
        )
        .await;
    assert_eq!(unknown["code"], 5000, "{unknown}");
}

#[tokio::test]
async fn backends_parameters_are_checked_field_by_field() {
    let app = TestApp::spawn().await;
    let id = app.create_instances(1, "web").await.remove(0);
    let lb = create_lb(&app, "checks").await;
    let cases: Vec<(Vec<(&str, &str)>, &str)> =
        vec![
        (vec![], "parameter backends is required"),
        (
            vec![("backends.0.instanceId", &id), ("backends.0.weight", "101")],
            "parameter backends.0.weight must be an integer from 0 to 100",
        ),
        (
            vec![("backends.0.instanceId", &id), ("backends.0.colour", "red")],
            "parameter backends.0.colour is not a field of backends; fields: instanceId, weight",
        ),
        (
            vec![("backends.0.instanceId", &id), ("backends.1.instanceId", &id)],
            "parameter backends.1.instanceId repeats",
        ),
        (
            vec![("backends.0.instanceId", "web-1")],
            "parameter backends.0.instanceId must look like ins-",
        ),
        (
            vec![("backends.0.instanceId", "ins-zzzzzzzz")],
            "parameter backends.0.instanceId instance ins-zzzzzzzz does not exist in ap-guangzhou",
        ),
    ];
    for (extra, expected) in cases {
        let mut params = vec![("loadBalancerId", lb.as_str())];
        params.extend(extra.iter().copied());
        let answer = app.call("RegisterInstancesWithLoadBalancer", &params).await;
        assert_eq!(answer["code"], 4000, "{params:?}: {answer}");
        assert!(
            text(&answer["message"]).starts_with(expected),
            "{params:?}: {answer}"
        );
    }
    assert_eq!(backends(&app, &lb).await["totalCount"], 0);
}
