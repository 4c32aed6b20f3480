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
    /// Accepted (a single value), without effect: legacy parameters such as
    /// `simplify` or `orderBy`.
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
    /// Of an entries query: the entry's key.
    EntryKey,
    /// Of an entries query: a field of the entry.
    EntryField(&'static str),
    /// Of an entries query: a source of the resource the entry's key names.
    Ref(Box<Source>),
}

impl Source {
    /// Parses `$id`, `$state`, `$status`, `$region`, `$createTime`, `$busyWith`,
    /// `$latestOperation`, `attr.NAME` or `[attr.NAME]`; for entries also `$key`,
    /// `entry.NAME` and `ref.` followed by one of the first kinds.
    pub fn parse(text: &'static str) -> Option<Self> {
        let attribute = |name: &'static str| (!name.is_empty()).then_some(name);
        if let Some(inner) = text.strip_prefix("ref.") {
            return match Self::parse(inner)? {
                Self::EntryKey | Self::EntryField(_) | Self::Ref(_) => None,
                inner => Some(Self::Ref(Box::new(inner))),
            };
        }
        if let Some(field) = text.strip_prefix("entry.") {
            return Some(Self::EntryField(attribute(field)?));
        }
        Some(match text {
            "$key" => Self::EntryKey,
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
    /// Lists the entries of one resource's map attribute instead of resources.
    pub entries: Option<Entries>,
}

/// An entries query: the map `attribute` of the resource named by `ids_param`, one
/// answer item per entry (sorted by key), joined with the resource each key names.
#[derive(Debug)]
pub struct Entries {
    pub ids_param: &'static str,
    pub attribute: &'static str,
    pub reference: Option<&'static ResourceType>,
}

pub async fn describe(spec: &DescribeSpec, ctx: QueryContext<'_>) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    if let Some(entries) = &spec.entries {
        return describe_entries(spec, entries, &ctx).await;
    }
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
                args.text(f.param)?;
            }
        }
    }
    let found = ctx
        .store
        .resources(ctx.call.account, filter, page(args)?)
        .await?;
    Ok(listing(spec, found.total, &found.items))
}

/// The resources of `kind` with these IDs in the call's account and region.
async fn resources_by_id(
    ctx: &QueryContext<'_>,
    kind: &ResourceType,
    ids: Vec<qtask_core::ResourceId>,
) -> Result<Vec<ResourceRecord>, EngineError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let page = qtask_store::Page {
        offset: 0,
        limit: ids.len() as u64,
    };
    let filter = ResourceFilter {
        kind: kind.kind.to_owned(),
        region: ctx.call.region,
        ids,
        states: Vec::new(),
        search: None,
        name_attr: "",
        attr_in: Vec::new(),
    };
    Ok(ctx
        .store
        .resources(ctx.call.account, filter, page)
        .await?
        .items)
}

async fn describe_entries(
    spec: &DescribeSpec,
    entries: &Entries,
    ctx: &QueryContext<'_>,
) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    let kind = spec.resource;
    let id = args.resource_id(entries.ids_param, kind.prefix)?;
    let Some(owner) = resources_by_id(ctx, kind, vec![id.clone()]).await?.pop() else {
        return Err(EngineError::NotFound(format!(
            "{} {id} does not exist in {}",
            kind.noun, ctx.call.region
        )));
    };
    let map = owner
        .attrs
        .get(entries.attribute)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let page = page(args)?;
    let shown: Vec<&String> = keys
        .iter()
        .skip(page.offset as usize)
        .take(page.limit as usize)
        .copied()
        .collect();
    let referenced = match entries.reference {
        Some(target) => {
            let ids = shown
                .iter()
                .map(|k| qtask_core::ResourceId::from_stored((*k).clone()))
                .collect();
            resources_by_id(ctx, target, ids).await?
        }
        None => Vec::new(),
    };
    let items = shown
        .iter()
        .map(|key| {
            let entry = &map[key.as_str()];
            let target = referenced.iter().find(|r| r.id.as_str() == key.as_str());
            let fields: Map<String, Value> = spec
                .view
                .iter()
                .map(|(name, source)| {
                    let value = match source {
                        Source::EntryKey => json!(key),
                        Source::EntryField(field) => {
                            entry.get(*field).cloned().unwrap_or(Value::Null)
                        }
                        Source::Ref(inner) => match (target, entries.reference) {
                            (Some(record), Some(target_kind)) => {
                                resource_field(target_kind, record, inner)
                            }
                            // The resource is gone (deleted by retention).
                            _ => Value::Null,
                        },
                        other => resource_field(kind, &owner, other),
                    };
                    ((*name).to_owned(), value)
                })
                .collect();
            Value::Object(fields)
        })
        .collect();
    let mut data = Map::new();
    data.insert("totalCount".into(), json!(keys.len()));
    data.insert(spec.list_key.into(), Value::Array(items));
    Ok(Answer::Data(data))
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
    let fields: Map<String, Value> = spec
        .view
        .iter()
        .map(|(key, source)| {
            (
                (*key).to_owned(),
                resource_field(spec.resource, record, source),
            )
        })
        .collect();
    Value::Object(fields)
}

/// One field of a resource's view (entry sources have no value here).
fn resource_field(kind: &ResourceType, record: &ResourceRecord, source: &Source) -> Value {
    match source {
        Source::Id => json!(record.id.as_str()),
        Source::State => json!(record.state.as_str()),
        Source::LegacyStatus => json!(kind.legacy_status(record.state.as_str())),
        Source::Region => json!(record.region.as_str()),
        Source::CreateTime => json!(time::format(record.created_at)),
        Source::BusyWith => json!(record.active_task.map(|t| t.to_string())),
        Source::LatestOperation => latest_operation(record),
        Source::Attribute(name) => record.attrs.get(*name).cloned().unwrap_or(Value::Null),
        Source::AttributeList(name) => {
            Value::Array(record.attrs.get(*name).cloned().into_iter().collect())
        }
        Source::EntryKey | Source::EntryField(_) | Source::Ref(_) => Value::Null,
    }
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
