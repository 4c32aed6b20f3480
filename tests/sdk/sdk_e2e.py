#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""End-to-end check of a running qtask server with the real legacy SDK.

Uses `qcloudapi-sdk-python` 2.0.15 exactly as a customer would, over HTTPS,
for GET and POST and for both signature methods.

Environment:
  QTASK_ENDPOINT    host:port of the server, e.g. 127.0.0.1:43121
  QTASK_SECRET_ID   API key id
  QTASK_SECRET_KEY  API key secret
  SSL_CERT_FILE     the CA the server's certificate chains to
  QTASK_REGION      optional, default ap-guangzhou
  QTASK_ZONE        optional, default ap-guangzhou-1

Prints one line per check and, last, "N passed, M failed"; exits non-zero
when a check failed.
"""

import json
import os
import sys
import time
import traceback

from QcloudApi.qcloudapi import QcloudApi

# The SDK hard-codes the host of the modules it knows (cvm, lb, ...); for an
# unknown module it uses config['endpoint'].
MODULE = "qtask"
REGION = os.environ.get("QTASK_REGION", "ap-guangzhou")
ZONE = os.environ.get("QTASK_ZONE", "ap-guangzhou-1")
TASK_DEADLINE = 30.0  # seconds to wait for one task
POLL_INTERVAL = 0.05
CALL_TIMEOUT = 30  # seconds, per HTTP request

RUNNING = 2
CREATING = 3
STOPPED = 4
TASK_SUCCESS = 0
TASK_FAILED = 1
TASK_RUNNING = 2
CODE_ALL_FAILED = 5100
CODE_SOME_FAILED = 5400

COMBINATIONS = [
    ("GET", "HmacSHA1"),
    ("GET", "HmacSHA256"),
    ("POST", "HmacSHA1"),
    ("POST", "HmacSHA256"),
]
UNICODE_NAME = u"测试 café 🚀"
SPECIAL_NAME = "a&b=c+d %41 100% x=y&z"

passed = 0
failed = 0


def check(name, cond, detail=""):
    """Records and prints one check; returns whether it passed."""
    global passed, failed
    if cond:
        passed += 1
        print("PASS  %s" % name)
    else:
        failed += 1
        print("FAIL  %s: %s" % (name, detail))
    sys.stdout.flush()
    return bool(cond)


def short(answer):
    """An answer, shortened for a failure line."""
    text = json.dumps(answer, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 600 else text[:600] + "..."


def client(method, sign_method, secret_key=None):
    config = {
        "secretId": os.environ["QTASK_SECRET_ID"],
        "secretKey": secret_key or os.environ["QTASK_SECRET_KEY"],
        "Region": REGION,
        "method": method,
        "SignatureMethod": sign_method,
        "endpoint": os.environ["QTASK_ENDPOINT"],
    }
    return QcloudApi(MODULE, config)


def call(api, action, params):
    """Calls the API; returns the decoded JSON answer.

    A network error, a non-200 status or an answer that is not JSON comes back
    as {"code": -1, "message": ...} so that the checks report it.
    """
    try:
        raw = api.call(action, params, req_timeout=CALL_TIMEOUT)
    except Exception as e:  # the SDK's exceptions carry no common base
        return {"code": -1, "message": "%s: %s" % (type(e).__name__, e)}
    try:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        answer = json.loads(raw)
    except ValueError as e:
        return {"code": -1, "message": "answer is not JSON (%s): %r" % (e, raw[:300])}
    if not isinstance(answer, dict):
        return {"code": -1, "message": "answer is not an object: %r" % (answer,)}
    return answer


def wait_task(api, request_id):
    """Polls DescribeTaskResult until the task ends or the deadline passes.

    Returns the last answer.
    """
    deadline = time.monotonic() + TASK_DEADLINE
    while True:
        answer = call(api, "DescribeTaskResult", {"requestId": request_id})
        if answer.get("code") != 0:
            return answer
        if task_status(answer) != TASK_RUNNING or time.monotonic() > deadline:
            return answer
        time.sleep(POLL_INTERVAL)


def task_status(answer):
    data = answer.get("data")
    return data.get("status") if isinstance(data, dict) else None


def check_task(name, api, request_id):
    """Waits for a task (or chain) and checks that it succeeded."""
    if not check(name + ": has a requestId", bool(request_id), repr(request_id)):
        return False
    answer = wait_task(api, request_id)
    return check(
        name + ": task %s succeeded" % request_id,
        answer.get("code") == 0 and task_status(answer) == TASK_SUCCESS,
        short(answer),
    )


def describe(api, ids):
    """DescribeInstances for `ids`; returns (answer, {instanceId: instance})."""
    answer = call(api, "DescribeInstances",
                  {"instanceIds": list(ids), "offset": 0, "limit": 100})
    found = {}
    for instance in answer.get("instanceSet") or []:
        if isinstance(instance, dict):
            found[instance.get("instanceId")] = instance
    return answer, found


def check_statuses(name, api, ids, want):
    answer, found = describe(api, ids)
    statuses = dict((i, (found.get(i) or {}).get("status")) for i in ids)
    return check(
        name,
        answer.get("code") == 0 and all(s == want for s in statuses.values()),
        "want status %s, got %s; %s" % (want, statuses, short(answer)),
    )


def run_instances(api, name, count, instance_name):
    """RunInstances and wait for it; returns the new ids ([] on failure)."""
    answer = call(api, "RunInstances", {
        "goodsNum": count,
        "instanceName": instance_name,
        "zoneId": ZONE,
    })
    ids = answer.get("instanceIds") or []
    ok = check(
        name + ": RunInstances answers code 0 with %d instance ids" % count,
        answer.get("code") == 0 and len(ids) == count
        and all(isinstance(i, str) and i.startswith("ins-") for i in ids),
        short(answer),
    )
    if not ok:
        return []
    if not check_task(name + ": RunInstances", api, answer.get("requestId")):
        return []
    return ids


def check_chain(name, api, action, ids):
    """A task-chain action on `ids` that must succeed for every instance."""
    answer = call(api, action, {"instanceIds": list(ids)})
    detail = answer.get("detail") if isinstance(answer.get("detail"), dict) else {}
    ok = check(
        "%s: %s answers code 0 with a detail per instance" % (name, action),
        answer.get("code") == 0 and all(
            isinstance(detail.get(i), dict) and detail[i].get("code") == 0
            for i in ids),
        short(answer),
    )
    if not ok:
        return False
    ok = check_task("%s: %s chain" % (name, action), api, answer.get("requestId"))
    for i in ids:
        ok = check_task("%s: %s on %s" % (name, action, i), api,
                        detail[i].get("requestId")) and ok
    return ok


def lifecycle(method, sign_method):
    """The whole instance life cycle with one method and signature method."""
    name = "%s/%s" % (method, sign_method)
    api = client(method, sign_method)

    answer = call(api, "DescribeInstances", {"offset": 0, "limit": 10})
    check(
        name + ": signed DescribeInstances answers code 0",
        answer.get("code") == 0 and isinstance(answer.get("totalCount"), int)
        and isinstance(answer.get("instanceSet"), list),
        short(answer),
    )

    instance_name = "sdk-e2e-%s-%s" % (method.lower(), sign_method.lower())
    ids = run_instances(api, name, 2, instance_name)
    if not ids:
        return
    answer, found = describe(api, ids)
    check(
        name + ": new instances are running with their name",
        answer.get("code") == 0 and answer.get("totalCount") == 2
        and sorted(found) == sorted(ids)
        and all(found[i].get("status") == RUNNING
                and found[i].get("instanceName") == instance_name for i in ids),
        short(answer),
    )

    if check_chain(name, api, "StopInstances", ids):
        check_statuses(name + ": stopped instances have status 4", api, ids, STOPPED)
    if check_chain(name, api, "StartInstances", ids):
        check_statuses(name + ": started instances have status 2", api, ids, RUNNING)

    # A mixed chain: one instance running, one stopped.
    running, stopped = ids
    if not check_chain(name + " (mixed setup)", api, "StopInstances", [stopped]):
        return
    answer = call(api, "StartInstances", {"instanceIds": [running, stopped]})
    detail = answer.get("detail") if isinstance(answer.get("detail"), dict) else {}
    running_detail = detail.get(running) if isinstance(detail.get(running), dict) else {}
    stopped_detail = detail.get(stopped) if isinstance(detail.get(stopped), dict) else {}
    check(
        name + ": StartInstances on a running and a stopped instance answers 5400",
        answer.get("code") == CODE_SOME_FAILED,
        short(answer),
    )
    check(
        name + ": ... the running instance's detail has code 5100",
        running_detail.get("code") == CODE_ALL_FAILED,
        short(answer),
    )
    if check(
        name + ": ... the stopped instance's detail has code 0",
        stopped_detail.get("code") == 0,
        short(answer),
    ):
        if check_task(name + ": StartInstances (mixed) on " + stopped, api,
                      stopped_detail.get("requestId")):
            check_statuses(name + ": after the mixed chain both are running",
                           api, ids, RUNNING)


def names_round_trip(method, sign_method):
    """Instance names that need encoding come back intact."""
    name = "%s/%s" % (method, sign_method)
    api = client(method, sign_method)
    for label, instance_name in (("unicode name", UNICODE_NAME),
                                 ("name with & = + % and spaces", SPECIAL_NAME)):
        ids = run_instances(api, "%s %s" % (name, label), 1, instance_name)
        if not ids:
            continue
        answer, found = describe(api, ids)
        got = (found.get(ids[0]) or {}).get("instanceName")
        check(
            "%s %s: DescribeInstances returns it intact" % (name, label),
            answer.get("code") == 0 and got == instance_name,
            "sent %r, got %r; %s" % (instance_name, got, short(answer)),
        )


def wait_lb_task(api, name, request_id):
    """Waits for a load-balancer task through the CLB module's legacy result action."""
    if not check(name + ": has a requestId", bool(request_id), repr(request_id)):
        return False
    deadline = time.monotonic() + TASK_DEADLINE
    while True:
        answer = call(api, "DescribeLoadBalancersTaskResult", {"requestId": request_id})
        status = task_status(answer)
        if answer.get("code") != 0 or status != TASK_RUNNING or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    return check(name + ": task %s succeeded" % request_id,
                 answer.get("code") == 0 and status == TASK_SUCCESS, short(answer))


def backends_of(api, lb):
    answer = call(api, "DescribeLoadBalancerBackends", {"loadBalancerId": lb})
    found = {}
    for backend in answer.get("backendSet") or []:
        if isinstance(backend, dict):
            found[backend.get("instanceId")] = backend
    return answer, found


def load_balancer_flow(method, sign_method):
    """Create a load balancer, register, re-weight and deregister backends, delete it."""
    name = "%s/%s lb" % (method, sign_method)
    api = client(method, sign_method)
    ids = run_instances(api, name, 2, "backend")
    if len(ids) != 2:
        return
    answer = call(api, "CreateLoadBalancer", {
        "loadBalancerType": 2, "loadBalancerName": "web-lb", "forward": 0, "number": 1})
    lbs = answer.get("unLoadBalancerIds") or []
    if not check(name + ": CreateLoadBalancer answers code 0 with one lb- id",
                 answer.get("code") == 0 and len(lbs) == 1
                 and str(lbs[0]).startswith("lb-"), short(answer)):
        return
    lb = lbs[0]
    if not wait_lb_task(api, name + ": CreateLoadBalancer", answer.get("requestId")):
        return
    answer = call(api, "DescribeLoadBalancers", {"loadBalancerIds": [lb]})
    found = (answer.get("loadBalancerSet") or [{}])[0]
    check(name + ": DescribeLoadBalancers shows it normal (status 1) with its name",
          answer.get("totalCount") == 1 and found.get("status") == 1
          and found.get("loadBalancerName") == "web-lb" and found.get("loadBalancerVips"),
          short(answer))

    answer = call(api, "RegisterInstancesWithLoadBalancer", {
        "loadBalancerId": lb,
        "backends": [{"instanceId": ids[0], "weight": 10}, {"instanceId": ids[1], "weight": 20}],
    })
    check(name + ": RegisterInstancesWithLoadBalancer answers code 0",
          answer.get("code") == 0, short(answer))
    wait_lb_task(api, name + ": RegisterInstancesWithLoadBalancer", answer.get("requestId"))
    answer, backends = backends_of(api, lb)
    check(name + ": both backends are registered, running (runFlag 2), with their weights",
          answer.get("totalCount") == 2
          and (backends.get(ids[0]) or {}).get("weight") == 10
          and (backends.get(ids[1]) or {}).get("weight") == 20
          and all((b or {}).get("runFlag") == RUNNING for b in backends.values()),
          short(answer))

    answer = call(api, "ModifyLoadBalancerBackends", {
        "loadBalancerId": lb, "backends": [{"instanceId": ids[1], "weight": 50}]})
    wait_lb_task(api, name + ": ModifyLoadBalancerBackends", answer.get("requestId"))
    answer, backends = backends_of(api, lb)
    check(name + ": the weight changed and the other backend kept its own",
          (backends.get(ids[1]) or {}).get("weight") == 50
          and (backends.get(ids[0]) or {}).get("weight") == 10, short(answer))

    answer = call(api, "DeregisterInstancesFromLoadBalancer", {
        "loadBalancerId": lb, "backends": [{"instanceId": ids[0]}]})
    wait_lb_task(api, name + ": DeregisterInstancesFromLoadBalancer", answer.get("requestId"))
    answer, backends = backends_of(api, lb)
    check(name + ": one backend is left", list(backends) == [ids[1]], short(answer))

    answer = call(api, "RegisterInstancesWithLoadBalancer", {
        "loadBalancerId": lb, "backends": [{"instanceId": "ins-zzzzzzzz", "weight": 1}]})
    check(name + ": registering an instance that does not exist is refused (4000)",
          answer.get("code") == 4000 and "ins-zzzzzzzz" in answer.get("message", ""),
          short(answer))

    answer = call(api, "ModifyLoadBalancerAttributes", {
        "loadBalancerId": lb, "loadBalancerName": "renamed-lb"})
    wait_lb_task(api, name + ": ModifyLoadBalancerAttributes", answer.get("requestId"))
    answer = call(api, "DeleteLoadBalancers", {"loadBalancerIds": [lb]})
    detail = answer.get("detail") if isinstance(answer.get("detail"), dict) else {}
    check(name + ": DeleteLoadBalancers is a chain accepted for the lb",
          answer.get("code") == 0 and (detail.get(lb) or {}).get("code") == 0, short(answer))
    wait_lb_task(api, name + ": DeleteLoadBalancers", answer.get("requestId"))
    answer = call(api, "DescribeLoadBalancers", {"loadBalancerIds": [lb]})
    found = (answer.get("loadBalancerSet") or [{}])[0]
    check(name + ": the deleted load balancer shows DELETED",
          found.get("statusName") == "DELETED" and found.get("loadBalancerName") == "renamed-lb",
          short(answer))


def wrong_key_is_refused(method, sign_method):
    api = client(method, sign_method, secret_key="not-the-" + os.environ["QTASK_SECRET_KEY"])
    answer = call(api, "DescribeInstances", {"offset": 0, "limit": 1})
    check(
        "%s/%s: a request signed with a wrong key is refused" % (method, sign_method),
        isinstance(answer.get("code"), int) and answer.get("code") not in (0, -1),
        short(answer),
    )


def guarded(step, *args):
    """Runs one step; an unexpected exception counts as a failed check."""
    try:
        step(*args)
    except Exception:
        check("%s%r ran without an exception" % (step.__name__, args), False,
              traceback.format_exc())


def main():
    missing = [v for v in ("QTASK_ENDPOINT", "QTASK_SECRET_ID", "QTASK_SECRET_KEY")
               if not os.environ.get(v)]
    if check("environment has %s" % ", ".join(
            ("QTASK_ENDPOINT", "QTASK_SECRET_ID", "QTASK_SECRET_KEY")),
            not missing, "missing: %s" % ", ".join(missing)):
        for method, sign_method in COMBINATIONS:
            guarded(lifecycle, method, sign_method)
        guarded(load_balancer_flow, "POST", "HmacSHA256")
        guarded(load_balancer_flow, "GET", "HmacSHA1")
        guarded(names_round_trip, "POST", "HmacSHA256")
        guarded(names_round_trip, "GET", "HmacSHA1")
        guarded(wrong_key_is_refused, "GET", "HmacSHA1")
        guarded(wrong_key_is_refused, "POST", "HmacSHA256")
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
