//! The simulated CVM: instances (`ins-` + 8 characters) and their actions, with the
//! legacy integer `status` of API 2.0 beside a readable state name.

use super::{
    storable, tasks::page, ActionSpec, BoxFuture, Handler, Operation, Prepared, QueryContext,
    ResourceType, Targets,
};
use crate::args::{ArgError, Args, MAX_BATCH_IDS};
use crate::policy::Policy;
use crate::{time, Answer, Call, EngineError};
use qtask_core::ResourceState;
use qtask_store::{OnBusy, ResourceFilter, ResourceRecord};
use serde_json::{json, Map, Value};

pub static INSTANCE: ResourceType = ResourceType {
    kind: "instance",
    noun: "instance",
    prefix: "ins",
    retired_state: Some(RETURNED),
};

pub const PENDING: &str = "PENDING";
pub const LAUNCH_FAILED: &str = "LAUNCH_FAILED";
pub const RUNNING: &str = "RUNNING";
pub const STOPPED: &str = "STOPPED";
pub const STARTING: &str = "STARTING";
pub const STOPPING: &str = "STOPPING";
pub const REBOOTING: &str = "REBOOTING";
pub const RESETTING_PASSWORD: &str = "RESETTING_PASSWORD";
pub const REINSTALLING: &str = "REINSTALLING";
pub const RETURNING: &str = "RETURNING";
pub const RETURNED: &str = "RETURNED";

/// Instance states and their legacy `status` integers.
pub const STATES: &[(&str, u8)] = &[
    (LAUNCH_FAILED, 1),
    (RUNNING, 2),
    (PENDING, 3),
    (STOPPED, 4),
    (RETURNED, 5),
    (RETURNING, 6),
    (REBOOTING, 7),
    (STARTING, 8),
    (STOPPING, 9),
    (RESETTING_PASSWORD, 10),
    (REINSTALLING, 14),
];

pub fn legacy_status(state: &str) -> Option<u8> {
    STATES
        .iter()
        .find(|(name, _)| *name == state)
        .map(|(_, n)| *n)
}

/// Images the simulator knows: (imageId, os name).
pub const IMAGES: &[(&str, &str)] = &[
    ("img-22trbn9x", "Ubuntu Server 22.04 LTS 64bit"),
    ("img-eb30mz89", "Debian 12.0 64bit"),
    ("img-9qabwvbn", "CentOS 7.9 64bit"),
    ("img-487zeit5", "TencentOS Server 3.1 (TK4)"),
];

const DEFAULT_NAME: &str = "Unnamed";
const MAX_NAME_CHARS: usize = 60;
/// Operating states in which an instance accepts management operations.
const SETTLED: &[&str] = &[RUNNING, STOPPED, LAUNCH_FAILED];

pub fn actions() -> Vec<ActionSpec> {
    let op =
        |action: &'static str, params: &'static [&'static str], operation: Operation| ActionSpec {
            name: action,
            params,
            handler: Handler::Mutate(operation),
        };
    let base = |action: &'static str, targets: Targets, prepare: super::PrepareFn| Operation {
        action,
        resource: &INSTANCE,
        targets,
        allowed: &[],
        transitional: None,
        on_success: None,
        on_failure: None,
        sim_seconds: 1.0,
        prepare,
        policy: Policy::default(),
    };
    vec![
        ActionSpec {
            name: "DescribeInstances",
            params: &[
                "instanceIds",
                "lanIps",
                "limit",
                "offset",
                "projectId",
                "searchWord",
                "simplify",
                "status",
                "zoneId",
            ],
            handler: Handler::Query(|ctx| Box::pin(describe_instances(ctx))),
        },
        op(
            "RunInstances",
            RUN_PARAMS,
            Operation {
                on_success: Some(RUNNING),
                on_failure: Some(LAUNCH_FAILED),
                sim_seconds: 20.0,
                ..base(
                    "RunInstances",
                    Targets::New {
                        initial: PENDING,
                        answer_key: "instanceIds",
                    },
                    prepare_run,
                )
            },
        ),
        op(
            "StartInstances",
            &["instanceIds"],
            Operation {
                allowed: &[STOPPED],
                transitional: Some(STARTING),
                on_success: Some(RUNNING),
                sim_seconds: 8.0,
                ..base(
                    "StartInstances",
                    Targets::Many("instanceIds"),
                    prepare_plain,
                )
            },
        ),
        op(
            "StopInstances",
            &["instanceIds", "forceStop"],
            Operation {
                allowed: &[RUNNING],
                transitional: Some(STOPPING),
                on_success: Some(STOPPED),
                sim_seconds: 8.0,
                ..base(
                    "StopInstances",
                    Targets::Many("instanceIds"),
                    prepare_force_stop,
                )
            },
        ),
        op(
            "RestartInstances",
            &["instanceIds", "forceStop"],
            Operation {
                allowed: &[RUNNING],
                transitional: Some(REBOOTING),
                on_success: Some(RUNNING),
                sim_seconds: 10.0,
                ..base(
                    "RestartInstances",
                    Targets::Many("instanceIds"),
                    prepare_force_stop,
                )
            },
        ),
        op(
            "ResetInstancePassword",
            &["instanceIds", "password", "hardPowerOffFlag"],
            Operation {
                allowed: &[RUNNING, STOPPED],
                transitional: Some(RESETTING_PASSWORD),
                sim_seconds: 5.0,
                ..base(
                    "ResetInstancePassword",
                    Targets::Many("instanceIds"),
                    prepare_reset_password,
                )
            },
        ),
        op(
            "ResetInstances",
            &[
                "instanceId",
                "imageId",
                "imageType",
                "password",
                "rootSize",
                "hardPowerOffFlag",
                "needMonitorAgent",
                "needSecurityAgent",
            ],
            Operation {
                allowed: &[RUNNING, STOPPED],
                transitional: Some(REINSTALLING),
                on_success: Some(RUNNING),
                sim_seconds: 30.0,
                ..base(
                    "ResetInstances",
                    Targets::One("instanceId"),
                    prepare_reinstall,
                )
            },
        ),
        op(
            "ReturnInstance",
            &["instanceId"],
            Operation {
                allowed: SETTLED,
                transitional: Some(RETURNING),
                on_success: Some(RETURNED),
                sim_seconds: 5.0,
                ..base("ReturnInstance", Targets::One("instanceId"), prepare_plain)
            },
        ),
        op(
            "ModifyInstanceAttributes",
            &["instanceId", "instanceName"],
            Operation {
                allowed: SETTLED,
                sim_seconds: 1.0,
                // Renaming is safe behind any operation: it waits its turn.
                policy: Policy {
                    on_busy: OnBusy::Queue,
                    ..Policy::default()
                },
                ..base(
                    "ModifyInstanceAttributes",
                    Targets::One("instanceId"),
                    prepare_modify,
                )
            },
        ),
    ]
}

const RUN_PARAMS: &[&str] = &[
    "zoneId",
    "cpu",
    "mem",
    "imageId",
    "imageType",
    "storageType",
    "storageSize",
    "rootSize",
    "bandwidthType",
    "bandwidth",
    "instanceName",
    "hostName",
    "password",
    "keyId",
    "projectId",
    "vpcId",
    "subnetId",
    "privateIpAddresses",
    "wanIp",
    "goodsNum",
    "period",
    "needMonitorAgent",
    "needSecurityAgent",
    "purchaseSource",
];

fn prepare_plain(call: &Call) -> BoxFuture<'_, Result<Prepared, EngineError>> {
    Box::pin(async move {
        Ok(Prepared {
            stored_params: storable(call, &[]),
            ..Prepared::default()
        })
    })
}

fn prepare_force_stop(call: &Call) -> BoxFuture<'_, Result<Prepared, EngineError>> {
    Box::pin(async move {
        Args(&call.params).flag("forceStop")?;
        Ok(Prepared {
            stored_params: storable(call, &[]),
            ..Prepared::default()
        })
    })
}

fn prepare_modify(call: &Call) -> BoxFuture<'_, Result<Prepared, EngineError>> {
    Box::pin(async move {
        let args = Args(&call.params);
        let name = args
            .bounded_text("instanceName", MAX_NAME_CHARS)?
            .ok_or_else(|| ArgError::new("instanceName", "is required"))?;
        let mut patch = Map::new();
        patch.insert("instanceName".into(), json!(name));
        Ok(Prepared {
            stored_params: storable(call, &[]),
            patch,
            ..Prepared::default()
        })
    })
}

fn prepare_reset_password(call: &Call) -> BoxFuture<'_, Result<Prepared, EngineError>> {
    Box::pin(async move {
        let args = Args(&call.params);
        args.flag("hardPowerOffFlag")?;
        let password = args.required_text("password")?;
        let mut patch = Map::new();
        patch.insert("passwordHash".into(), json!(hash_password(password).await?));
        Ok(Prepared {
            stored_params: storable(call, &["password"]),
            patch,
            ..Prepared::default()
        })
    })
}

fn prepare_reinstall(call: &Call) -> BoxFuture<'_, Result<Prepared, EngineError>> {
    Box::pin(async move {
        let args = Args(&call.params);
        for flag in ["hardPowerOffFlag", "needMonitorAgent", "needSecurityAgent"] {
            args.flag(flag)?;
        }
        args.bounded_text("imageType", 32)?;
        let mut patch = Map::new();
        if let Some(image) = args.text("imageId")? {
            let os = image_os("imageId", image)?;
            patch.insert("imageId".into(), json!(image));
            patch.insert("os".into(), json!(os));
        }
        if let Some(root) = args.int("rootSize", 20, 1024)? {
            patch.insert("rootSize".into(), json!(root));
        }
        if let Some(password) = args.text("password")? {
            patch.insert("passwordHash".into(), json!(hash_password(password).await?));
        }
        Ok(Prepared {
            stored_params: storable(call, &["password"]),
            patch,
            ..Prepared::default()
        })
    })
}

fn prepare_run(call: &Call) -> BoxFuture<'_, Result<Prepared, EngineError>> {
    Box::pin(async move {
        let args = Args(&call.params);
        let region = call.region;
        let zone = match args.text("zoneId")? {
            None => region.default_zone(),
            Some(zone) if region.has_zone(zone) => zone.to_owned(),
            Some(zone) => {
                return Err(ArgError::new(
                    "zoneId",
                    format!("{zone:?} is not a zone of {region} (zones look like {region}-1)"),
                )
                .into())
            }
        };
        let image = args.text("imageId")?.unwrap_or(IMAGES[0].0);
        let os = image_os("imageId", image)?;
        let count = args.int("goodsNum", 1, MAX_BATCH_IDS as i64)?.unwrap_or(1) as usize;
        let private_ips = args.text_list("privateIpAddresses")?;
        if !private_ips.is_empty() && private_ips.len() != count {
            return Err(ArgError::new(
                "privateIpAddresses",
                format!(
                    "names {} addresses for {count} instances (goodsNum)",
                    private_ips.len()
                ),
            )
            .into());
        }
        for (i, ip) in private_ips.iter().enumerate() {
            if ip.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(ArgError::new(
                    format!("privateIpAddresses.{i}"),
                    "must be an IPv4 address",
                )
                .into());
            }
        }
        for flag in ["wanIp", "needMonitorAgent", "needSecurityAgent"] {
            args.flag(flag)?;
        }
        for text in [
            "imageType",
            "storageType",
            "bandwidthType",
            "keyId",
            "vpcId",
            "subnetId",
            "purchaseSource",
        ] {
            args.bounded_text(text, 64)?;
        }
        args.int("period", 1, 36)?;
        let bandwidth = args.int("bandwidth", 0, 1000)?.unwrap_or(1);
        let mut common = Map::new();
        common.insert(
            "instanceName".into(),
            json!(args
                .bounded_text("instanceName", MAX_NAME_CHARS)?
                .unwrap_or(DEFAULT_NAME)),
        );
        if let Some(host) = args.bounded_text("hostName", MAX_NAME_CHARS)? {
            common.insert("hostName".into(), json!(host));
        }
        common.insert("zone".into(), json!(zone));
        common.insert("cpu".into(), json!(args.int("cpu", 1, 256)?.unwrap_or(1)));
        common.insert("mem".into(), json!(args.int("mem", 1, 2048)?.unwrap_or(2)));
        common.insert("imageId".into(), json!(image));
        common.insert("os".into(), json!(os));
        common.insert(
            "rootSize".into(),
            json!(args.int("rootSize", 20, 1024)?.unwrap_or(50)),
        );
        common.insert(
            "storageSize".into(),
            json!(args.int("storageSize", 0, 32000)?.unwrap_or(0)),
        );
        common.insert("bandwidth".into(), json!(bandwidth));
        common.insert(
            "projectId".into(),
            json!(args.int("projectId", 0, i64::from(u32::MAX))?.unwrap_or(0)),
        );
        for key in ["vpcId", "subnetId", "keyId"] {
            if let Some(value) = args.text(key)? {
                common.insert(key.into(), json!(value));
            }
        }
        if let Some(password) = args.text("password")? {
            common.insert("passwordHash".into(), json!(hash_password(password).await?));
        }
        let public = args.flag("wanIp")?.unwrap_or(bandwidth > 0);
        let new_resources = (0..count)
            .map(|i| {
                let mut attrs = common.clone();
                let lan_ip = private_ips
                    .get(i)
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(random_lan_ip);
                attrs.insert("lanIp".into(), json!(lan_ip));
                if public {
                    attrs.insert("wanIp".into(), json!(random_wan_ip()));
                }
                attrs
            })
            .collect();
        Ok(Prepared {
            stored_params: storable(call, &["password"]),
            new_resources,
            ..Prepared::default()
        })
    })
}

fn image_os(param: &str, image: &str) -> Result<&'static str, ArgError> {
    IMAGES
        .iter()
        .find(|(id, _)| *id == image)
        .map(|(_, os)| *os)
        .ok_or_else(|| {
            let known: Vec<&str> = IMAGES.iter().map(|(id, _)| *id).collect();
            ArgError::new(
                param,
                format!(
                    "{image:?} is not a known image; known images: {}",
                    known.join(", ")
                ),
            )
        })
}

fn random_lan_ip() -> String {
    let [a, b, c]: [u8; 3] = rand::random();
    format!("10.{a}.{b}.{}", c.max(2))
}

fn random_wan_ip() -> String {
    let [b, c, d]: [u8; 3] = rand::random();
    format!("43.{b}.{c}.{}", d.max(2))
}

/// Checks the password rules (8 to 30 characters, at least three of: lower case, upper
/// case, digits, symbols) and returns its Argon2id hash. The password itself is never
/// stored, logged or repeated in a message.
async fn hash_password(password: &str) -> Result<String, EngineError> {
    const SYMBOLS: &str = "()`~!@#$%^&*-+=_|{}[]:;'<>,.?/";
    let length = password.chars().count();
    let classes = [
        password.chars().any(|c| c.is_ascii_lowercase()),
        password.chars().any(|c| c.is_ascii_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| SYMBOLS.contains(c)),
    ]
    .iter()
    .filter(|present| **present)
    .count();
    let allowed = password
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || SYMBOLS.contains(c));
    if !(8..=30).contains(&length) || classes < 3 || !allowed {
        return Err(ArgError::new(
            "password",
            format!(
                "must be 8 to 30 characters with at least three of: lower case, upper case, digits, symbols ({SYMBOLS})"
            ),
        )
        .into());
    }
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| EngineError::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| EngineError::Internal(format!("password hashing panicked: {e}")))?
}

async fn describe_instances(ctx: QueryContext<'_>) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    let ids = if args.0.contains_key("instanceIds") {
        args.resource_ids("instanceIds", INSTANCE.prefix)?
    } else {
        Vec::new()
    };
    let states = match args.int("status", 0, 255)? {
        None => Vec::new(),
        Some(status) => STATES
            .iter()
            .filter(|(_, n)| i64::from(*n) == status)
            .map(|(name, _)| ResourceState::new(name))
            .collect::<Vec<_>>(),
    };
    if args.0.contains_key("status") && states.is_empty() {
        // A status no instance can have matches nothing rather than everything.
        return Ok(instance_listing(0, &[]));
    }
    let mut attr_in = Vec::new();
    if let Some(zone) = args.bounded_text("zoneId", 64)? {
        attr_in.push(("zone", vec![json!(zone)]));
    }
    if let Some(project) = args.int("projectId", 0, i64::from(u32::MAX))? {
        attr_in.push(("projectId", vec![json!(project)]));
    }
    let lan_ips = args.text_list("lanIps")?;
    if !lan_ips.is_empty() {
        attr_in.push(("lanIp", lan_ips.iter().map(|ip| json!(ip)).collect()));
    }
    args.flag("simplify")?;
    let filter = ResourceFilter {
        kind: INSTANCE.kind.to_owned(),
        region: ctx.call.region,
        ids,
        states,
        search: args
            .bounded_text("searchWord", MAX_NAME_CHARS)?
            .map(str::to_owned),
        name_attr: "instanceName",
        attr_in,
    };
    let listing = ctx
        .store
        .resources(ctx.call.account, filter, page(args)?)
        .await?;
    Ok(instance_listing(listing.total, &listing.items))
}

fn instance_listing(total: u64, items: &[ResourceRecord]) -> Answer {
    let mut data = Map::new();
    data.insert("totalCount".into(), json!(total));
    data.insert(
        "instanceSet".into(),
        Value::Array(items.iter().map(instance_view).collect()),
    );
    Answer::Data(data)
}

/// An instance as DescribeInstances shows it. Attributes are picked one by one, so a
/// stored secret (the password hash) can never leak into an answer.
fn instance_view(record: &ResourceRecord) -> Value {
    let attr = |key: &str| record.attrs.get(key).cloned().unwrap_or(Value::Null);
    let wan_ips: Vec<Value> = record.attrs.get("wanIp").cloned().into_iter().collect();
    let latest = record.last_operation.as_ref().map(|op| {
        let mut view = json!({
            "action": op.action,
            "requestId": op.task.to_string(),
            "state": op.state.as_str(),
            "status": op.state.legacy_status(),
        });
        if let Some(error) = &op.error {
            view["error"] = json!({"code": error.code, "message": error.message});
        }
        view
    });
    json!({
        "instanceId": record.id.as_str(),
        "unInstanceId": record.id.as_str(),
        "instanceName": attr("instanceName"),
        "status": legacy_status(record.state.as_str()),
        "statusName": record.state.as_str(),
        "region": record.region.as_str(),
        "zoneId": attr("zone"),
        "zoneName": attr("zone"),
        "cpu": attr("cpu"),
        "mem": attr("mem"),
        "imageId": attr("imageId"),
        "os": attr("os"),
        "lanIp": attr("lanIp"),
        "wanIpSet": wan_ips,
        "bandwidth": attr("bandwidth"),
        "rootSize": attr("rootSize"),
        "storageSize": attr("storageSize"),
        "projectId": attr("projectId"),
        "vpcId": attr("vpcId"),
        "subnetId": attr("subnetId"),
        "createTime": time::format(record.created_at),
        "busyWith": record.active_task.map(|t| t.to_string()),
        "latestOperation": latest,
    })
}
