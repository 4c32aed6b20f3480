//! The catalog file format (TOML): resource types and the actions on them, loaded from
//! the embedded defaults and from `--catalog` files, checked, and turned into the
//! [`Catalog`] the engine runs. An invalid file is refused with its name, the line and
//! the problem.
//!
//! Loaded values live as long as the process (catalogs are read once, at start), so
//! names are leaked into `&'static str` rather than reference-counted everywhere.

use super::describe::{DescribeSpec, Entries, Filter, FilterMatch, Source};
use super::params::{Check, FieldRule, Generator, GeneratorKind, Merge, ParamKind, ParamRule};
use super::{ActionSpec, Catalog, Handler, Operation, ResourceType, StateSpec, Targets};
use crate::args::MAX_BATCH_IDS;
use crate::policy::Policy;
use indexmap::IndexMap;
use qtask_store::OnBusy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// One catalog file's text and the name its errors give.
#[derive(Debug, Clone)]
pub struct CatalogSource {
    pub name: String,
    pub text: String,
    /// The file's directory: an `exec` command starting with `./` or `../` is found
    /// relative to it, so a catalog and its scripts can move together.
    pub dir: Option<PathBuf>,
}

/// The built-in catalogs, written in the same format as users' files.
pub const BUILTIN: &[(&str, &str)] = &[
    ("builtin:cvm.toml", include_str!("builtin/cvm.toml")),
    ("builtin:clb.toml", include_str!("builtin/clb.toml")),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct CatalogError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub resource_types: IndexMap<String, Spanned<ResourceTypeFile>>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub actions: IndexMap<String, Spanned<ActionFile>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceTypeFile {
    /// IDs are `<prefix>-` and 8 lower-case letters or digits.
    pub prefix: String,
    /// What messages call one ("instance"); the type's name by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noun: Option<String>,
    pub states: Vec<String>,
    /// The legacy API's status integer of each state that has one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub legacy_status: BTreeMap<String, u8>,
    /// The state a new resource shows while its creation runs.
    pub initial_state: String,
    /// The state of a resource gone for good; retention deletes it later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_state: Option<String>,
    /// The attribute a search word matches besides the ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_attribute: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Lists resources (`list_key`, `filters`, `view`).
    Query,
    /// Operates one existing resource named by `ids_param`: a general async call.
    Single,
    /// Operates a list of existing resources named by `ids_param`: a task chain.
    Chain,
    /// Creates resources (`count_param` of them); answers their IDs under `answer_ids`.
    Create,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionFile {
    pub kind: ActionKind,
    pub resource_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids_param: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_param: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_ids: Option<String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, Spanned<ParamFile>>,
    /// States the resource must be in; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preconditions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transitional: Option<String>,
    /// The final state on success; the prior state when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_success: Option<String>,
    /// The final state on failure; the prior state when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorSpec>,
    #[serde(default, skip_serializing_if = "PolicyFile::is_empty")]
    pub policy: PolicyFile,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub generate: IndexMap<String, GeneratorFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_key: Option<String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub filters: IndexMap<String, FilterFile>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub view: IndexMap<String, String>,
    /// A query over the entries of one resource's map attribute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<EntriesFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesFile {
    /// The parameter naming the resource.
    pub ids_param: String,
    /// Its map attribute.
    pub attribute: String,
    /// The resource type each entry's key names (for `ref.` view sources).
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamFile {
    #[serde(rename = "type")]
    pub kind: ParamKind,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_items: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_of: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub secret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_resource: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derive: Option<DeriveFile>,
    /// For `objects`: each object's fields.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub fields: IndexMap<String, FieldFile>,
    /// For `objects` with an attribute: the field that keys the attribute's map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For `objects` with a key: add, remove or update those entries on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge: Option<Merge>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldFile {
    #[serde(rename = "type")]
    pub kind: ParamKind,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<toml::Value>,
    /// The value names a resource of this type, which must exist.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveFile {
    pub attribute: String,
    pub map: IndexMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorFile {
    pub kind: GeneratorKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when_absent: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterFile {
    #[serde(rename = "match")]
    pub matches: FilterMatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// For attribute filters: `string` (default), `int`, or `list` of text.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ParamKind>,
}

/// What does an action's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ExecutorSpec {
    /// The simulator: waits `seconds` × `--sim-speed`, then succeeds (or fails when
    /// fault injection says so).
    Sim { seconds: f64 },
    /// Runs a program (argv; never a shell) with the task as JSON on stdin.
    Exec {
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        working_dir: Option<PathBuf>,
    },
    /// POSTs the task as JSON to `url`, signed with the shared secret (from
    /// `secret_env`, or `secret`).
    Http {
        url: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        secret_env: Option<String>,
    },
}

/// An action's policy as written (also the configuration file's `[actions.NAME]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_busy: Option<OnBusySetting>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBusySetting {
    Refuse,
    Queue,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl PolicyFile {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `policy` with these settings applied; `Err` names the bad key.
    pub fn apply(&self, mut policy: Policy) -> Result<Policy, String> {
        if let Some(n) = self.max_attempts {
            if n == 0 {
                return Err("max_attempts must be at least 1".into());
            }
            policy.max_attempts = n;
        }
        if let Some(text) = &self.timeout {
            policy.timeout = duration("timeout", text)?;
            if policy.timeout.is_zero() {
                return Err("timeout must be longer than 0".into());
            }
        }
        if let Some(text) = &self.backoff {
            policy.backoff = duration("backoff", text)?;
        }
        if let Some(text) = &self.backoff_max {
            policy.backoff_max = duration("backoff_max", text)?;
        }
        if let Some(on_busy) = self.on_busy {
            policy.on_busy = match on_busy {
                OnBusySetting::Refuse => OnBusy::Refuse,
                OnBusySetting::Queue => OnBusy::Queue,
            };
        }
        Ok(policy)
    }
}

/// A duration such as `30s`, `5m`, `7d` or `250ms`.
pub fn duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| format!("{key} must be a duration such as 30s, 5m, 12h or 7d, not {text:?}"))
}

/// Parameters every call carries; an action may not declare them.
const COMMON_PARAMS: &[&str] = &[
    "Action",
    "Nonce",
    "Region",
    "SecretId",
    "Signature",
    "SignatureMethod",
    "Timestamp",
    super::CLIENT_TOKEN,
    "offset",
    "limit",
];

/// Where an item came from, to point at it in an error.
#[derive(Clone)]
struct Origin<'a> {
    file: &'a str,
    text: &'a str,
    dir: Option<&'a std::path::Path>,
}

impl Origin<'_> {
    fn error(&self, at: usize, message: impl Into<String>) -> CatalogError {
        let before = &self.text[..at.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        CatalogError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Parses one file (syntax and shape only).
pub fn parse(source: &CatalogSource) -> Result<CatalogFile, CatalogError> {
    toml::from_str(&source.text).map_err(|e| {
        let origin = Origin {
            file: &source.name,
            text: &source.text,
            dir: None,
        };
        let at = e.span().map_or(0, |span| span.start);
        origin.error(at, e.message().trim().to_owned())
    })
}

/// The merged catalog: the built-in query actions, then every source in order (a later
/// file's resource type or action replaces an earlier one of the same name).
pub fn load(sources: &[CatalogSource]) -> Result<(Catalog, CatalogFile), CatalogError> {
    let mut types: IndexMap<String, (usize, Spanned<ResourceTypeFile>)> = IndexMap::new();
    let mut actions: IndexMap<String, (usize, Spanned<ActionFile>)> = IndexMap::new();
    for (index, source) in sources.iter().enumerate() {
        let file = parse(source)?;
        for (name, spec) in file.resource_types {
            types.insert(name, (index, spec));
        }
        for (name, spec) in file.actions {
            actions.insert(name, (index, spec));
        }
    }
    let origin = |index: usize| Origin {
        file: &sources[index].name,
        text: &sources[index].text,
        dir: sources[index].dir.as_deref(),
    };

    let mut catalog = Catalog::with_builtin_queries();
    let mut built_types: IndexMap<&str, &'static ResourceType> = IndexMap::new();
    for (name, (index, spec)) in &types {
        let at = spec.span().start;
        let kind = resource_type(name, spec.get_ref()).map_err(|m| origin(*index).error(at, m))?;
        let kind: &'static ResourceType = Box::leak(Box::new(kind));
        built_types.insert(name, kind);
        catalog.resource_types.push(kind);
    }
    for (name, (index, spec)) in &actions {
        let origin = origin(*index);
        let built = action(name, spec, &built_types, &origin)?;
        if catalog.actions.contains_key(built.name) {
            return Err(origin.error(
                spec.span().start,
                format!("{name} is a built-in action and cannot be redefined"),
            ));
        }
        catalog.actions.insert(built.name, built);
    }
    check_views_hide_secrets(&catalog, &actions, &origin)?;
    let merged = CatalogFile {
        resource_types: types.into_iter().map(|(n, (_, s))| (n, s)).collect(),
        actions: actions.into_iter().map(|(n, (_, s))| (n, s)).collect(),
    };
    Ok((catalog, merged))
}

/// A view may not show an attribute that holds a secret's hash.
fn check_views_hide_secrets<'a>(
    catalog: &Catalog,
    actions: &IndexMap<String, (usize, Spanned<ActionFile>)>,
    origin: &dyn Fn(usize) -> Origin<'a>,
) -> Result<(), CatalogError> {
    let secret_attributes: Vec<(&str, &str)> = catalog
        .actions
        .values()
        .filter_map(|spec| match &spec.handler {
            Handler::Mutate(op) => Some(op),
            _ => None,
        })
        .flat_map(|op| {
            op.params
                .iter()
                .filter(|p| p.secret)
                .filter_map(move |p| Some((op.resource.kind, p.attribute?)))
        })
        .collect();
    for spec in catalog.actions.values() {
        let Handler::Describe(describe) = &spec.handler else {
            continue;
        };
        for (field, source) in &describe.view {
            let (Source::Attribute(attribute) | Source::AttributeList(attribute)) = source else {
                continue;
            };
            if secret_attributes.contains(&(describe.resource.kind, *attribute)) {
                let (index, spanned) = &actions[spec.name];
                return Err(origin(*index).error(
                    spanned.span().start,
                    format!(
                        "action {}: view.{field} shows attribute {attribute}, which holds a secret",
                        spec.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn leak(text: &str) -> &'static str {
    text.to_owned().leak()
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} must start with a letter and have only letters, digits and _ (at most 64)"
        ))
    }
}

fn resource_type(name: &str, spec: &ResourceTypeFile) -> Result<ResourceType, String> {
    check_name("resource type", name)?;
    let prefix_ok =
        (1..=8).contains(&spec.prefix.len()) && spec.prefix.chars().all(|c| c.is_ascii_lowercase());
    if !prefix_ok {
        return Err(format!(
            "prefix {:?} must be 1 to 8 lower-case letters",
            spec.prefix
        ));
    }
    if spec.states.is_empty() {
        return Err(format!("resource type {name} lists no states"));
    }
    for state in &spec.states {
        check_name("state", state)?;
    }
    let known = |what: &str, state: &str| {
        if spec.states.iter().any(|s| s == state) {
            Ok(())
        } else {
            Err(format!(
                "{what} {state:?} is not one of the states of {name} ({})",
                spec.states.join(", ")
            ))
        }
    };
    known("initial_state", &spec.initial_state)?;
    if let Some(retired) = &spec.retired_state {
        known("retired_state", retired)?;
    }
    for state in spec.legacy_status.keys() {
        known("legacy_status names", state)?;
    }
    Ok(ResourceType {
        kind: leak(name),
        noun: leak(spec.noun.as_deref().unwrap_or(name)),
        prefix: leak(&spec.prefix),
        states: spec
            .states
            .iter()
            .map(|state| StateSpec {
                name: leak(state),
                legacy_status: spec.legacy_status.get(state).copied(),
            })
            .collect::<Vec<_>>()
            .leak(),
        initial_state: leak(&spec.initial_state),
        retired_state: spec.retired_state.as_deref().map(leak),
        name_attribute: spec.name_attribute.as_deref().map(leak),
    })
}

fn action(
    name: &str,
    spanned: &Spanned<ActionFile>,
    types: &IndexMap<&str, &'static ResourceType>,
    origin: &Origin<'_>,
) -> Result<ActionSpec, CatalogError> {
    let at = spanned.span().start;
    let fail = |message: String| origin.error(at, format!("action {name}: {message}"));
    let spec = spanned.get_ref();
    check_name("action", name).map_err(fail)?;
    let resource = *types.get(spec.resource_type.as_str()).ok_or_else(|| {
        fail(format!(
            "resource_type {:?} is not defined (known: {})",
            spec.resource_type,
            types.keys().copied().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let state =
        |what: &str, value: &Option<String>| -> Result<Option<&'static str>, CatalogError> {
            match value {
                None => Ok(None),
                Some(state) if resource.has_state(state) => Ok(Some(leak(state))),
                Some(state) => Err(fail(format!(
                    "{what} {state:?} is not a state of {} ({})",
                    resource.kind,
                    resource.state_names().join(", ")
                ))),
            }
        };
    let mut accepted: Vec<&'static str> = Vec::new();
    let name = leak(name);

    if spec.kind == ActionKind::Query {
        for key in [
            spec.ids_param.is_some(),
            spec.count_param.is_some(),
            spec.executor.is_some(),
            !spec.params.is_empty(),
            !spec.preconditions.is_empty(),
            spec.transitional.is_some() || spec.on_success.is_some() || spec.on_failure.is_some(),
        ] {
            if key {
                return Err(fail(
                    "a query takes list_key, filters and view; params, executor, states and ids_param belong to mutating actions".into(),
                ));
            }
        }
        let list_key = spec
            .list_key
            .as_deref()
            .ok_or_else(|| fail("a query needs list_key (the answer's list)".into()))?;
        if spec.view.is_empty() {
            return Err(fail("a query needs a view (answer field = source)".into()));
        }
        let entries = match &spec.entries {
            None => None,
            Some(entries) => {
                if !spec.filters.is_empty() {
                    return Err(fail("an entries query takes no filters".into()));
                }
                check_name("entries.ids_param", &entries.ids_param).map_err(fail)?;
                check_name("entries.attribute", &entries.attribute).map_err(fail)?;
                let reference = match &entries.reference {
                    None => None,
                    Some(kind) => Some(*types.get(kind.as_str()).ok_or_else(|| {
                        fail(format!("entries.ref {kind:?} is not a resource type"))
                    })?),
                };
                accepted.push(leak(&entries.ids_param));
                Some(Entries {
                    ids_param: leak(&entries.ids_param),
                    attribute: leak(&entries.attribute),
                    reference,
                })
            }
        };
        let mut view = Vec::new();
        for (field, source) in &spec.view {
            let parsed = Source::parse(leak(source)).ok_or_else(|| {
                fail(format!(
                    "view.{field} = {source:?}: a source is $id, $state, $status, $region, $createTime, $busyWith, $latestOperation, attr.NAME or [attr.NAME] (and in entries queries $key, entry.NAME, ref.SOURCE)"
                ))
            })?;
            let entry_source = matches!(
                parsed,
                Source::EntryKey | Source::EntryField(_) | Source::Ref(_)
            );
            let needs_ref = matches!(parsed, Source::Ref(_));
            match &entries {
                None if entry_source => {
                    return Err(fail(format!(
                        "view.{field} = {source:?} needs an entries query"
                    )))
                }
                Some(e) if needs_ref && e.reference.is_none() => {
                    return Err(fail(format!("view.{field} = {source:?} needs entries.ref")))
                }
                _ => {}
            }
            view.push((leak(field), parsed));
        }
        let mut filters = Vec::new();
        for (param, filter) in &spec.filters {
            check_name("filter", param).map_err(fail)?;
            if filter.attribute.is_some() != (filter.matches == FilterMatch::Attribute) {
                return Err(fail(format!(
                    "filters.{param}: attribute goes with match = \"attribute\", and only there"
                )));
            }
            let kind = filter.kind.unwrap_or(ParamKind::String);
            if !matches!(kind, ParamKind::String | ParamKind::Int | ParamKind::List) {
                return Err(fail(format!(
                    "filters.{param}: type is string, int or list"
                )));
            }
            accepted.push(leak(param));
            filters.push(Filter {
                param: leak(param),
                matches: filter.matches,
                attribute: filter.attribute.as_deref().map(leak),
                integer: kind == ParamKind::Int,
                list: kind == ParamKind::List,
            });
        }
        accepted.extend(["offset", "limit"]);
        let describe: &'static DescribeSpec = Box::leak(Box::new(DescribeSpec {
            resource,
            list_key: leak(list_key),
            filters,
            view,
            entries,
        }));
        return Ok(ActionSpec {
            name,
            params: accepted.leak(),
            handler: Handler::Describe(describe),
        });
    }

    if spec.list_key.is_some() || !spec.filters.is_empty() || !spec.view.is_empty() {
        return Err(fail("list_key, filters and view belong to queries".into()));
    }
    let mut executor = spec
        .executor
        .clone()
        .ok_or_else(|| fail("needs an executor (type = \"sim\", \"exec\" or \"http\")".into()))?;
    check_executor(&executor).map_err(fail)?;
    if let (ExecutorSpec::Exec { command, .. }, Some(dir)) = (&mut executor, origin.dir) {
        let program = &mut command[0];
        if program.starts_with("./") || program.starts_with("../") {
            *program = dir.join(&*program).display().to_string();
        }
    }
    let targets = match spec.kind {
        ActionKind::Single | ActionKind::Chain => {
            if spec.count_param.is_some() || spec.answer_ids.is_some() {
                return Err(fail(
                    "count_param and answer_ids belong to create actions".into(),
                ));
            }
            let param = spec.ids_param.as_deref().ok_or_else(|| {
                fail("needs ids_param (the parameter that names the resource IDs)".into())
            })?;
            check_name("ids_param", param).map_err(fail)?;
            accepted.push(leak(param));
            if spec.kind == ActionKind::Single {
                Targets::One(leak(param))
            } else {
                Targets::Many(leak(param))
            }
        }
        ActionKind::Create => {
            if spec.ids_param.is_some()
                || !spec.preconditions.is_empty()
                || spec.transitional.is_some()
            {
                return Err(fail(
                    "a create action has no ids_param, preconditions or transitional state (new resources show the type's initial_state)".into(),
                ));
            }
            let answer_key = spec
                .answer_ids
                .as_deref()
                .ok_or_else(|| fail("needs answer_ids (the answer's list of new IDs)".into()))?;
            if let Some(count) = &spec.count_param {
                check_name("count_param", count).map_err(fail)?;
                accepted.push(leak(count));
            }
            let max_count = spec.max_count.unwrap_or(MAX_BATCH_IDS);
            if !(1..=MAX_BATCH_IDS).contains(&max_count) {
                return Err(fail(format!("max_count must be 1 to {MAX_BATCH_IDS}")));
            }
            Targets::New {
                count_param: spec.count_param.as_deref().map(leak),
                max_count,
                answer_key: leak(answer_key),
            }
        }
        ActionKind::Query => unreachable!("handled above"),
    };
    let mut params = Vec::new();
    for (param, rule) in &spec.params {
        let rule_at = rule.span().start;
        let rule_fail =
            |m: String| origin.error(rule_at, format!("action {name}: params.{param}: {m}"));
        if COMMON_PARAMS.contains(&param.as_str()) || accepted.contains(&param.as_str()) {
            return Err(rule_fail(
                "is already a parameter of every call or of this action".into(),
            ));
        }
        check_name("parameter", param).map_err(rule_fail)?;
        let built = param_rule(param, rule.get_ref(), spec.kind, types).map_err(rule_fail)?;
        accepted.push(built.name);
        params.push(built);
    }
    let mut generate = Vec::new();
    for (attribute, generator) in &spec.generate {
        if spec.kind != ActionKind::Create {
            return Err(fail("generate belongs to create actions".into()));
        }
        for param in [&generator.when, &generator.when_absent]
            .into_iter()
            .flatten()
        {
            if !params.iter().any(|p| p.name == param) {
                return Err(fail(format!(
                    "generate.{attribute}: {param:?} is not a declared parameter"
                )));
            }
        }
        generate.push(Generator {
            attribute: leak(attribute),
            kind: generator.kind,
            when: generator.when.as_deref().map(leak),
            when_absent: generator.when_absent.as_deref().map(leak),
        });
    }
    let mut allowed = Vec::new();
    for precondition in &spec.preconditions {
        allowed.push(state("precondition", &Some(precondition.clone()))?.expect("given"));
    }
    let policy = spec
        .policy
        .apply(Policy::default())
        .map_err(|m| fail(format!("policy: {m}")))?;
    let operation = Operation {
        action: name,
        resource,
        targets,
        allowed: allowed.leak(),
        transitional: state("transitional", &spec.transitional)?,
        on_success: state("on_success", &spec.on_success)?,
        on_failure: state("on_failure", &spec.on_failure)?,
        params: params.leak(),
        generate: generate.leak(),
        executor,
        policy,
    };
    Ok(ActionSpec {
        name,
        params: accepted.leak(),
        handler: Handler::Mutate(Box::new(operation)),
    })
}

fn check_executor(executor: &ExecutorSpec) -> Result<(), String> {
    match executor {
        ExecutorSpec::Sim { seconds } if !seconds.is_finite() || *seconds < 0.0 => Err(format!(
            "executor: seconds must be a number ≥ 0, not {seconds}"
        )),
        ExecutorSpec::Exec { command, .. } if command.first().is_none_or(|p| p.is_empty()) => Err(
            "executor: command must name a program: command = [\"/path/to/program\", \"arg\", …]"
                .into(),
        ),
        ExecutorSpec::Http {
            url,
            secret,
            secret_env,
        } => {
            let parsed = url::Url::parse(url)
                .map_err(|e| format!("executor: url {url:?} is not a URL ({e})"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("executor: url {url:?} must be http:// or https://"));
            }
            if secret.is_some() && secret_env.is_some() {
                return Err("executor: give secret or secret_env, not both".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn param_rule(
    name: &str,
    spec: &ParamFile,
    action: ActionKind,
    types: &IndexMap<&str, &'static ResourceType>,
) -> Result<ParamRule, String> {
    let kind = spec.kind;
    let only = |present: bool, key: &str, kinds: &[ParamKind]| {
        if present && !kinds.contains(&kind) {
            Err(format!(
                "{key} does not apply to a parameter of type {kind}"
            ))
        } else {
            Ok(())
        }
    };
    only(
        spec.min.is_some() || spec.max.is_some(),
        "min/max",
        &[ParamKind::Int],
    )?;
    only(
        spec.max_length.is_some(),
        "max_length",
        &[ParamKind::String, ParamKind::List],
    )?;
    only(
        !spec.one_of.is_empty(),
        "one_of",
        &[ParamKind::String, ParamKind::List],
    )?;
    only(
        spec.check.is_some(),
        "check",
        &[ParamKind::String, ParamKind::List],
    )?;
    only(spec.per_resource, "per_resource", &[ParamKind::List])?;
    only(spec.secret, "secret", &[ParamKind::String])?;
    only(spec.derive.is_some(), "derive", &[ParamKind::String])?;
    only(
        !spec.fields.is_empty() || spec.key.is_some() || spec.merge.is_some(),
        "fields/key/merge",
        &[ParamKind::Objects],
    )?;
    only(
        spec.max_items.is_some(),
        "max_items",
        &[ParamKind::List, ParamKind::Objects],
    )?;
    if kind == ParamKind::Objects && spec.fields.is_empty() {
        return Err("an objects parameter needs fields".into());
    }
    if spec.key.is_some() != spec.merge.is_some() {
        return Err("key and merge go together".into());
    }
    if let Some(key) = &spec.key {
        if !spec.fields.contains_key(key) {
            return Err(format!("key {key:?} is not one of the fields"));
        }
        if spec.attribute.is_none() {
            return Err("key and merge need the attribute (a map) they change".into());
        }
    }
    let fields = spec
        .fields
        .iter()
        .map(|(field, file)| field_rule(field, file, types))
        .collect::<Result<Vec<_>, String>>()?;
    if let (Some(min), Some(max)) = (spec.min, spec.max) {
        if min > max {
            return Err(format!("min {min} is larger than max {max}"));
        }
    }
    if spec.per_resource && action != ActionKind::Create {
        return Err("per_resource belongs to create actions".into());
    }
    if spec.per_resource && spec.attribute.is_none() {
        return Err("per_resource needs the attribute each item goes to".into());
    }
    if spec.required && spec.default.is_some() {
        return Err("a required parameter cannot have a default".into());
    }
    if spec.secret && spec.default.is_some() {
        return Err("a secret cannot have a default".into());
    }
    if spec.check == Some(Check::Password) && !spec.secret {
        return Err("check = \"password\" needs secret = true".into());
    }
    let default = match &spec.default {
        None => None,
        Some(value) => Some(default_value(kind, value)?),
    };
    if let (Some(serde_json::Value::String(text)), false) = (&default, spec.one_of.is_empty()) {
        if !spec.one_of.contains(text) {
            return Err(format!("default {text:?} is not one of one_of"));
        }
    }
    for (key, value) in [("attribute", &spec.attribute)] {
        if let Some(value) = value {
            check_name(key, value)?;
        }
    }
    let derive = match &spec.derive {
        None => None,
        Some(derive) => {
            check_name("derive.attribute", &derive.attribute)?;
            Some((
                leak(&derive.attribute),
                derive
                    .map
                    .iter()
                    .map(|(from, to)| (leak(from), leak(to)))
                    .collect(),
            ))
        }
    };
    Ok(ParamRule {
        name: leak(name),
        kind,
        required: spec.required,
        min: spec.min,
        max: spec.max,
        max_length: spec.max_length,
        max_items: spec.max_items,
        one_of: spec.one_of.iter().map(|s| leak(s)).collect(),
        default,
        secret: spec.secret,
        attribute: spec.attribute.as_deref().map(leak),
        check: spec.check,
        per_resource: spec.per_resource,
        derive,
        fields,
        keyed: spec
            .key
            .as_deref()
            .zip(spec.merge)
            .map(|(key, merge)| (leak(key), merge)),
    })
}

fn field_rule(
    name: &str,
    spec: &FieldFile,
    types: &IndexMap<&str, &'static ResourceType>,
) -> Result<FieldRule, String> {
    check_name("field", name)?;
    let at = |m: String| format!("fields.{name}: {m}");
    if !matches!(spec.kind, ParamKind::String | ParamKind::Int) {
        return Err(at("a field is a string or an int".into()));
    }
    if (spec.min.is_some() || spec.max.is_some()) && spec.kind != ParamKind::Int {
        return Err(at("min/max apply to int fields".into()));
    }
    if (spec.max_length.is_some() || spec.reference.is_some()) && spec.kind != ParamKind::String {
        return Err(at("max_length and ref apply to string fields".into()));
    }
    let reference = match &spec.reference {
        None => None,
        Some(kind) => Some(
            *types
                .get(kind.as_str())
                .ok_or_else(|| at(format!("ref {kind:?} is not a resource type")))?,
        ),
    };
    Ok(FieldRule {
        name: leak(name),
        kind: spec.kind,
        required: spec.required,
        min: spec.min,
        max: spec.max,
        max_length: spec.max_length,
        default: spec
            .default
            .as_ref()
            .map(|v| default_value(spec.kind, v))
            .transpose()
            .map_err(at)?,
        reference,
    })
}

fn default_value(kind: ParamKind, value: &toml::Value) -> Result<serde_json::Value, String> {
    let json = match (kind, value) {
        (ParamKind::String, toml::Value::String(s)) => serde_json::json!(s),
        (ParamKind::Int, toml::Value::Integer(n)) => serde_json::json!(n),
        (ParamKind::Bool, toml::Value::Boolean(b)) => serde_json::json!(b),
        (ParamKind::List, toml::Value::Array(items)) if items.iter().all(toml::Value::is_str) => {
            serde_json::json!(items
                .iter()
                .filter_map(toml::Value::as_str)
                .collect::<Vec<_>>())
        }
        _ => return Err(format!("default {value} is not a value of type {kind}")),
    };
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn source(text: &str) -> CatalogSource {
        CatalogSource {
            name: "mine.toml".into(),
            text: text.into(),
            dir: None,
        }
    }

    fn error(text: &str) -> String {
        match Catalog::load(&[source(text)]) {
            Ok(_) => panic!("accepted an invalid catalog:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const DATABASE: &str = r#"
[resource_types.database]
prefix = "db"
states = ["CREATING", "AVAILABLE", "BACKING_UP", "FAILED"]
initial_state = "CREATING"

[actions.BackupDatabases]
kind = "chain"
resource_type = "database"
ids_param = "databaseIds"
preconditions = ["AVAILABLE"]
transitional = "BACKING_UP"
executor = { type = "exec", command = ["/usr/local/bin/backup"] }
params = { label = { type = "string", max_length = 20 } }
"#;

    #[test]
    fn the_builtin_catalog_loads_and_is_data() {
        let catalog = Catalog::builtin();
        let run = catalog.operation("RunInstances").expect("RunInstances");
        assert_eq!(run.resource.prefix, "ins");
        assert_eq!(run.executor, ExecutorSpec::Sim { seconds: 20.0 });
        assert_eq!(run.resource.legacy_status("REINSTALLING"), Some(14));
        assert!(matches!(
            catalog.get("DescribeInstances").unwrap().handler,
            Handler::Describe(_)
        ));
        assert!(catalog.get("DescribeTaskResult").is_some());
        assert_eq!(
            catalog
                .operation("ModifyInstanceAttributes")
                .unwrap()
                .policy
                .on_busy,
            OnBusy::Queue
        );
    }

    #[test]
    fn a_user_file_adds_types_and_actions_and_overrides_builtin_ones() {
        let text = format!(
            "{DATABASE}\n[actions.StopInstances]\nkind = \"chain\"\nresource_type = \"instance\"\nids_param = \"instanceIds\"\npreconditions = [\"RUNNING\"]\non_success = \"STOPPED\"\nexecutor = {{ type = \"sim\", seconds = 1 }}\npolicy = {{ max_attempts = 7 }}\n"
        );
        let (catalog, merged) = Catalog::load(&[source(&text)]).unwrap();
        let backup = catalog.operation("BackupDatabases").unwrap();
        assert_eq!(backup.resource.noun, "database");
        assert_eq!(backup.allowed, ["AVAILABLE"]);
        assert!(matches!(backup.executor, ExecutorSpec::Exec { .. }));
        let stop = catalog.operation("StopInstances").unwrap();
        assert_eq!(stop.policy.max_attempts, 7);
        assert_eq!(stop.transitional, None, "the override replaced the action");
        assert!(merged.actions.contains_key("BackupDatabases"));
        // `catalog show` prints the merged catalog, and it loads again.
        let shown = toml::to_string(&merged).unwrap();
        let (again, _) = file_load_only(&shown);
        assert!(again.operation("BackupDatabases").is_some());
    }

    /// Loads one file without the built-in ones (for round trips of merged catalogs).
    fn file_load_only(text: &str) -> (Catalog, CatalogFile) {
        load(&[source(text)]).unwrap()
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("[actions.X\nkind = 1", "mine.toml:1:"),
            (
                "[resource_types.db]\nprefix = \"db\"\nstates = [\"A\"]\ninitial_state = \"A\"\ncolour = \"red\"\n",
                "unknown field `colour`",
            ),
            (
                "[actions.Backup]\nkind = \"chain\"\nresource_type = \"nothing\"\nids_param = \"ids\"\nexecutor = { type = \"sim\", seconds = 1 }\n",
                "mine.toml:1:1: action Backup: resource_type \"nothing\" is not defined",
            ),
            (
                &DATABASE.replace("preconditions = [\"AVAILABLE\"]", "preconditions = [\"READY\"]"),
                "mine.toml:7:1: action BackupDatabases: precondition \"READY\" is not a state of database (CREATING, AVAILABLE, BACKING_UP, FAILED)",
            ),
            (
                &DATABASE.replace("ids_param = \"databaseIds\"\n", ""),
                "action BackupDatabases: needs ids_param",
            ),
            (
                &DATABASE.replace("executor = { type = \"exec\", command = [\"/usr/local/bin/backup\"] }\n", ""),
                "action BackupDatabases: needs an executor",
            ),
            (
                &DATABASE.replace("[\"/usr/local/bin/backup\"]", "[]"),
                "executor: command must name a program",
            ),
            (
                &DATABASE.replace(
                    "{ type = \"exec\", command = [\"/usr/local/bin/backup\"] }",
                    "{ type = \"http\", url = \"ftp://x/y\" }",
                ),
                "must be http:// or https://",
            ),
            (
                &DATABASE.replace("max_length = 20", "min = 5"),
                "params.label: min/max does not apply to a parameter of type string",
            ),
            (
                &DATABASE.replace("{ type = \"string\", max_length = 20 }", "{ type = \"int\", min = 9, max = 2 }"),
                "params.label: min 9 is larger than max 2",
            ),
            (
                &DATABASE.replace("max_length = 20", "check = \"password\""),
                "check = \"password\" needs secret = true",
            ),
            (
                &DATABASE.replace("label = {", "Nonce = {"),
                "params.Nonce: is already a parameter",
            ),
            (
                &DATABASE.replace("prefix = \"db\"", "prefix = \"DB-\""),
                "prefix \"DB-\" must be 1 to 8 lower-case letters",
            ),
            (
                &format!("{DATABASE}\n[actions.DescribeTaskResult]\nkind = \"query\"\nresource_type = \"database\"\nlist_key = \"x\"\nview = {{ id = \"$id\" }}\n"),
                "DescribeTaskResult is a built-in action and cannot be redefined",
            ),
            (
                &format!("{}\n[actions.DescribeDatabases]\nkind = \"query\"\nresource_type = \"database\"\nlist_key = \"set\"\nview = {{ id = \"$id\", hash = \"attr.pw\" }}\n", DATABASE.replace("label = {", "pw = { type = \"string\", secret = true, attribute = \"pw\" }, label = {")),
                "action DescribeDatabases: view.hash shows attribute pw, which holds a secret",
            ),
            (
                &format!("{DATABASE}\n[actions.DescribeDatabases]\nkind = \"query\"\nresource_type = \"database\"\nlist_key = \"set\"\nview = {{ id = \"$identity\" }}\n"),
                "view.id = \"$identity\": a source is",
            ),
            (
                &DATABASE.replace(
                    "params = {",
                    "policy = { timeout = \"soon\" }\nparams = {",
                ),
                "policy: timeout must be a duration",
            ),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(
                message.contains(expected),
                "expected {expected:?} in:\n{message}\nfor:\n{text}"
            );
        }
    }

    #[test]
    fn the_line_points_at_the_offending_parameter() {
        let text = DATABASE.replace("max_length = 20", "max_items = 3");
        let message = error(&text);
        let line = text.lines().position(|l| l.starts_with("params")).unwrap() + 1;
        assert!(
            message.starts_with(&format!("mine.toml:{line}:")),
            "{message} (expected line {line})"
        );
        assert!(message.contains("max_items does not apply"), "{message}");
    }
}
