//! Declared queries: a `Describe…` action lists one resource type's resources with
//! filters and shows each through a view — both written in the catalog.

use super::tasks::page;
use super::{QueryContext, ResourceType};
use crate::args::{ArgError, Args};
use crate::{time, Answer, EngineError};
use qtask_core::ResourceState;
use qtask_store::{ResourceFilter, ResourceRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// How a filter parameter narrows the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterMatch {
    /// A list of resource IDs (`name.0`, `name.1`, …).
    Ids,
    /// A legacy status integer.
    LegacyStatus,
    /// A state name, or several separated by commas.
    State,
    /// An attribute equal to the value (a list parameter: to any of its values).
    Attribute,
    /// A substring of the ID or of the type's name attribute.
    Search,
    /// Accepted and checked as a flag, without effect (legacy parameters).
    Ignore,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub param: &'static str,
    pub matches: FilterMatch,
    pub attribute: Option<&'static str>,
    /// For attribute filters: whether values are integers.
    pub integer: bool,
    /// For attribute filters: whether the parameter is a list.
    pub list: bool,
}

/// Where a view field's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Id,
    State,
    LegacyStatus,
    Region,
    CreateTime,
    BusyWith,
    LatestOperation,
    Attribute(&'static str),
    /// An optional attribute as a list of zero or one value.
    AttributeList(&'static str),
}

impl Source {
    /// Parses `$id`, `$state`, `$status`, `$region`, `$createTime`, `$busyWith`,
    /// `$latestOperation`, `attr.NAME` or `[attr.NAME]`.
    pub fn parse(text: &'static str) -> Option<Self> {
        let attribute = |name: &'static str| (!name.is_empty()).then_some(name);
        Some(match text {
            "$id" => Self::Id,
            "$state" => Self::State,
            "$status" => Self::LegacyStatus,
            "$region" => Self::Region,
            "$createTime" => Self::CreateTime,
            "$busyWith" => Self::BusyWith,
            "$latestOperation" => Self::LatestOperation,
            _ => {
                if let Some(inner) = text
                    .strip_prefix("[attr.")
                    .and_then(|t| t.strip_suffix(']'))
                {
                    Self::AttributeList(attribute(inner)?)
                } else {
                    Self::Attribute(attribute(text.strip_prefix("attr.")?)?)
                }
            }
        })
    }
}

/// A declared listing query.
#[derive(Debug)]
pub struct DescribeSpec {
    pub resource: &'static ResourceType,
    pub list_key: &'static str,
    pub filters: Vec<Filter>,
    pub view: Vec<(&'static str, Source)>,
}

pub async fn describe(spec: &DescribeSpec, ctx: QueryContext<'_>) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    let kind = spec.resource;
    let mut filter = ResourceFilter {
        kind: kind.kind.to_owned(),
        region: ctx.call.region,
        ids: Vec::new(),
        states: Vec::new(),
        search: None,
        name_attr: kind.name_attribute.unwrap_or(""),
        attr_in: Vec::new(),
    };
    for f in &spec.filters {
        if !args.0.contains_key(f.param) {
            continue;
        }
        match f.matches {
            FilterMatch::Ids => filter.ids = args.resource_ids(f.param, kind.prefix)?,
            FilterMatch::LegacyStatus => {
                let status = args.int(f.param, 0, 255)?.unwrap_or_default();
                let states = kind.states_with_status(status);
                if states.is_empty() {
                    // A status nothing can have matches nothing rather than everything.
                    return Ok(listing(spec, 0, &[]));
                }
                filter.states.extend(states);
            }
            FilterMatch::State => {
                for name in args.required_text(f.param)?.split(',').map(str::trim) {
                    if !kind.has_state(name) {
                        return Err(ArgError::new(
                            f.param,
                            format!("{name:?} is not a state of {}", kind.noun),
                        )
                        .into());
                    }
                    filter.states.push(ResourceState::new(name));
                }
            }
            FilterMatch::Attribute => {
                let attribute = f.attribute.unwrap_or(f.param);
                let texts = if f.list {
                    args.text_list(f.param)?
                } else {
                    vec![args.required_text(f.param)?]
                };
                let values = texts
                    .iter()
                    .map(|text| {
                        if f.integer {
                            text.trim()
                                .parse::<i64>()
                                .map(|n| json!(n))
                                .map_err(|_| ArgError::new(f.param, "must be an integer"))
                        } else {
                            Ok(json!(text))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                filter.attr_in.push((attribute, values));
            }
            FilterMatch::Search => {
                filter.search = args.bounded_text(f.param, 128)?.map(str::to_owned);
            }
            FilterMatch::Ignore => {
                args.flag(f.param)?;
            }
        }
    }
    let found = ctx
        .store
        .resources(ctx.call.account, filter, page(args)?)
        .await?;
    Ok(listing(spec, found.total, &found.items))
}

fn listing(spec: &DescribeSpec, total: u64, items: &[ResourceRecord]) -> Answer {
    let mut data = Map::new();
    data.insert("totalCount".into(), json!(total));
    data.insert(
        spec.list_key.into(),
        Value::Array(items.iter().map(|r| view(spec, r)).collect()),
    );
    Answer::Data(data)
}

/// A resource as the view shows it. Fields are picked one by one, so a stored secret's
/// hash can never leak into an answer unless a view names it (which validation forbids).
pub fn view(spec: &DescribeSpec, record: &ResourceRecord) -> Value {
    let attr = |key: &str| record.attrs.get(key).cloned().unwrap_or(Value::Null);
    let fields: Map<String, Value> = spec
        .view
        .iter()
        .map(|(key, source)| {
            let value = match source {
                Source::Id => json!(record.id.as_str()),
                Source::State => json!(record.state.as_str()),
                Source::LegacyStatus => json!(spec.resource.legacy_status(record.state.as_str())),
                Source::Region => json!(record.region.as_str()),
                Source::CreateTime => json!(time::format(record.created_at)),
                Source::BusyWith => json!(record.active_task.map(|t| t.to_string())),
                Source::LatestOperation => latest_operation(record),
                Source::Attribute(name) => attr(name),
                Source::AttributeList(name) => {
                    Value::Array(record.attrs.get(*name).cloned().into_iter().collect())
                }
            };
            ((*key).to_owned(), value)
        })
        .collect();
    Value::Object(fields)
}

fn latest_operation(record: &ResourceRecord) -> Value {
    let Some(op) = &record.last_operation else {
        return Value::Null;
    };
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
}
