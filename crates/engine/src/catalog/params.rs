//! Declared parameters: what a catalog says an action takes, and the one generic
//! preparation that checks a call against it and yields what the tasks store — the
//! stored parameters (secrets removed), the attributes of new resources, and the
//! attributes a task merges into its resource on success.

use super::ResourceType;
use crate::args::{ArgError, Args, MAX_BATCH_IDS};
use crate::{Call, EngineError};
use qtask_core::ResourceId;
use qtask_store::{Page, ResourceFilter, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A parameter's type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    String,
    Int,
    Bool,
    /// `name.0`, `name.1`, … of text values.
    List,
    /// `name.key=value` (or `name.N.key` lists of objects): kept as given.
    Object,
    /// `name.N.field=…`: a list of objects whose `fields` are declared.
    Objects,
}

impl std::fmt::Display for ParamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::String => "string",
            Self::Int => "int",
            Self::Bool => "bool",
            Self::List => "list",
            Self::Object => "object",
            Self::Objects => "objects",
        })
    }
}

/// A named check beyond type and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// 8 to 30 characters with at least three of: lower case, upper case, digits,
    /// symbols.
    Password,
    /// A zone of the call's region (`<region>-N`).
    Zone,
    /// A dotted IPv4 address (each list item, for a list).
    Ipv4,
}

/// How a value generated for each new resource is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneratorKind {
    /// `10.x.y.z`.
    PrivateIpv4,
    /// `43.x.y.z`.
    PublicIpv4,
}

/// One declared parameter.
#[derive(Debug, Clone)]
pub struct ParamRule {
    pub name: &'static str,
    pub kind: ParamKind,
    pub required: bool,
    /// Integer bounds.
    pub min: Option<i64>,
    pub max: Option<i64>,
    /// Characters of a text value (or of each list item).
    pub max_length: Option<usize>,
    pub max_items: Option<usize>,
    pub one_of: Vec<&'static str>,
    /// Applied when the parameter is absent (`{region}` in text stands for the call's
    /// region). Defaults fill new resources' attributes; they never patch.
    pub default: Option<Value>,
    /// Never stored in plaintext, returned or logged: dropped from the task's stored
    /// parameters; an attribute keeps only its Argon2id hash.
    pub secret: bool,
    /// The resource attribute the value goes to.
    pub attribute: Option<&'static str>,
    pub check: Option<Check>,
    /// A list with one item per new resource (creation actions).
    pub per_resource: bool,
    /// Sets another attribute from this value through a table (an image's OS).
    pub derive: Option<(&'static str, Vec<(&'static str, &'static str)>)>,
    /// For `objects`: each object's fields.
    pub fields: Vec<FieldRule>,
    /// For `objects` with an attribute: the field whose value keys the attribute's map,
    /// and what the action does to those entries.
    pub keyed: Option<(&'static str, Merge)>,
}

/// One field of the objects of an `objects` parameter.
#[derive(Debug, Clone)]
pub struct FieldRule {
    pub name: &'static str,
    /// `String` or `Int`.
    pub kind: ParamKind,
    pub required: bool,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub max_length: Option<usize>,
    pub default: Option<Value>,
    /// The value is the ID of a resource of this type, which must exist in the
    /// caller's account and region.
    pub reference: Option<&'static ResourceType>,
}

/// What an `objects` parameter does to the map attribute it names, on success. The
/// change is a merge the store applies when the task ends, so concurrent tasks on
/// other entries never lose each other's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Merge {
    /// Adds the entries (or replaces them, when the key is there already).
    Add,
    /// Removes the entries with these keys.
    Remove,
    /// Changes the given fields of the entries.
    Update,
}

/// A value made for each new resource whose attribute is still unset.
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    pub attribute: &'static str,
    pub kind: GeneratorKind,
    /// Only when this parameter is true (or a non-zero number)…
    pub when: Option<&'static str>,
    /// …or, when it is absent, when this one is.
    pub when_absent: Option<&'static str>,
}

/// What a mutating call's parameters yield for its tasks.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The parameters to keep with each task (secrets removed).
    pub stored_params: Map<String, Value>,
    /// Attributes merged into each resource on success.
    pub patch: Map<String, Value>,
    /// For actions that create resources: each new resource's attributes.
    pub new_resources: Vec<Map<String, Value>>,
}

/// Checks `call` against the declared parameters. `create` is the number of resources
/// a creation makes (`None` for actions on existing resources).
pub async fn prepare(
    call: &Call,
    rules: &[ParamRule],
    generators: &[Generator],
    create: Option<usize>,
) -> Result<Prepared, EngineError> {
    let args = Args(&call.params);
    let mut values: Vec<(&ParamRule, Option<Value>)> = Vec::with_capacity(rules.len());
    for rule in rules {
        values.push((rule, typed_value(args, rule, call)?));
    }
    let secrets: Vec<&str> = rules.iter().filter(|r| r.secret).map(|r| r.name).collect();
    let mut prepared = Prepared {
        stored_params: super::storable(call, &secrets),
        ..Prepared::default()
    };
    match create {
        None => {
            // Only what was given changes the resource: defaults never overwrite.
            for (rule, value) in &values {
                if let (Some(value), true) = (value, call.params.contains_key(rule.name)) {
                    set_attributes(&mut prepared.patch, rule, value).await?;
                }
            }
        }
        Some(count) => {
            let mut common = Map::new();
            for (rule, value) in &values {
                if let (Some(value), false) = (value, rule.per_resource) {
                    set_attributes(&mut common, rule, value).await?;
                }
            }
            let mut resources = vec![common; count];
            for (rule, value) in &values {
                if !rule.per_resource {
                    continue;
                }
                let Some(Value::Array(items)) = value else {
                    continue;
                };
                if items.len() != count {
                    return Err(ArgError::new(
                        rule.name,
                        format!(
                            "names {} values for {count} new resources; give one per resource",
                            items.len()
                        ),
                    )
                    .into());
                }
                for (attrs, item) in resources.iter_mut().zip(items) {
                    set_attributes(attrs, rule, item).await?;
                }
            }
            for generator in generators {
                if !generator_applies(generator, &values) {
                    continue;
                }
                for attrs in &mut resources {
                    if !attrs.contains_key(generator.attribute) {
                        attrs.insert(generator.attribute.into(), generate(generator.kind));
                    }
                }
            }
            prepared.new_resources = resources;
        }
    }
    Ok(prepared)
}

/// The parameter's checked value (or its default), as JSON of its type.
fn typed_value(args: Args<'_>, rule: &ParamRule, call: &Call) -> Result<Option<Value>, ArgError> {
    let name = rule.name;
    if !args.0.contains_key(name) {
        if rule.required {
            return Err(ArgError::new(name, "is required"));
        }
        return Ok(rule.default.as_ref().map(|d| expand_default(d, call)));
    }
    let value = match rule.kind {
        ParamKind::String => {
            let text = args
                .bounded_text(name, rule.max_length.unwrap_or(usize::MAX))?
                .unwrap_or_default();
            check_text(rule, name, text, call)?;
            json!(text)
        }
        ParamKind::Int => json!(args
            .int(
                name,
                rule.min.unwrap_or(i64::MIN),
                rule.max.unwrap_or(i64::MAX)
            )?
            .unwrap_or_default()),
        ParamKind::Bool => json!(args.flag(name)?.unwrap_or_default()),
        ParamKind::List => {
            let items = args.text_list(name)?;
            let most = rule.max_items.unwrap_or(MAX_BATCH_IDS);
            if items.len() > most {
                return Err(ArgError::new(
                    name,
                    format!("names {} values; at most {most}", items.len()),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let param = format!("{name}.{i}");
                if let Some(max) = rule.max_length {
                    if item.chars().count() > max {
                        return Err(ArgError::new(
                            param,
                            format!("must be at most {max} characters"),
                        ));
                    }
                }
                check_text(rule, &param, item, call)?;
            }
            json!(items)
        }
        ParamKind::Objects => Value::Array(objects(args, rule)?),
        ParamKind::Object => match args.0.get(name) {
            Some(value @ (Value::Object(_) | Value::Array(_))) => value.clone(),
            _ => {
                return Err(ArgError::new(
                    name,
                    format!("must be given as {name}.<key>=… or {name}.0.<key>=…"),
                ))
            }
        },
    };
    Ok(Some(value))
}

/// The checked objects of an `objects` parameter, defaults applied.
fn objects(args: Args<'_>, rule: &ParamRule) -> Result<Vec<Value>, ArgError> {
    let name = rule.name;
    let Some(Value::Array(items)) = args.0.get(name) else {
        let example = rule.fields.first().map_or("field", |f| f.name);
        return Err(ArgError::new(
            name,
            format!("must be a list of objects: {name}.0.{example}=…, {name}.1.{example}=…"),
        ));
    };
    let most = rule.max_items.unwrap_or(MAX_BATCH_IDS);
    if items.is_empty() || items.len() > most {
        return Err(ArgError::new(
            name,
            format!("names {} objects; give 1 to {most}", items.len()),
        ));
    }
    let mut checked = Vec::with_capacity(items.len());
    let mut keys = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(fields) = item else {
            return Err(ArgError::new(format!("{name}.{i}"), "must be an object"));
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !rule.fields.iter().any(|f| f.name == *k))
        {
            let known: Vec<&str> = rule.fields.iter().map(|f| f.name).collect();
            return Err(ArgError::new(
                format!("{name}.{i}.{unknown}"),
                format!("is not a field of {name}; fields: {}", known.join(", ")),
            ));
        }
        let mut object = Map::new();
        for field in &rule.fields {
            let param = format!("{name}.{i}.{}", field.name);
            let value = match fields.get(field.name) {
                None if field.required => return Err(ArgError::new(param, "is required")),
                None => match &field.default {
                    Some(default) => default.clone(),
                    None => continue,
                },
                Some(Value::String(text)) => field_value(field, &param, text)?,
                Some(_) => return Err(ArgError::new(param, "must be a single value")),
            };
            object.insert(field.name.into(), value);
        }
        if let Some((key, _)) = rule.keyed {
            let value = object.get(key).cloned().unwrap_or(Value::Null);
            if keys.contains(&value) {
                return Err(ArgError::new(
                    format!("{name}.{i}.{key}"),
                    format!("repeats {value}; name each once"),
                ));
            }
            keys.push(value);
        }
        checked.push(Value::Object(object));
    }
    Ok(checked)
}

fn field_value(field: &FieldRule, param: &str, text: &str) -> Result<Value, ArgError> {
    match field.kind {
        ParamKind::Int => {
            let (min, max) = (field.min.unwrap_or(i64::MIN), field.max.unwrap_or(i64::MAX));
            let bad = || ArgError::new(param, format!("must be an integer from {min} to {max}"));
            let n: i64 = text.trim().parse().map_err(|_| bad())?;
            if n < min || n > max {
                return Err(bad());
            }
            Ok(json!(n))
        }
        _ => {
            if text.is_empty() {
                return Err(ArgError::new(param, "must not be empty"));
            }
            if let Some(max) = field.max_length {
                if text.chars().count() > max {
                    return Err(ArgError::new(
                        param,
                        format!("must be at most {max} characters"),
                    ));
                }
            }
            if let Some(kind) = field.reference {
                ResourceId::parse(kind.prefix, text)
                    .map_err(|e| ArgError::new(param, format!("{e} (got {text:?})")))?;
            }
            Ok(json!(text))
        }
    }
}

fn expand_default(default: &Value, call: &Call) -> Value {
    match default {
        Value::String(text) => Value::String(text.replace("{region}", call.region.as_str())),
        other => other.clone(),
    }
}

fn check_text(rule: &ParamRule, param: &str, text: &str, call: &Call) -> Result<(), ArgError> {
    if !rule.one_of.is_empty() && !rule.one_of.contains(&text) {
        return Err(ArgError::new(
            param,
            format!("{text:?} is not one of {}", rule.one_of.join(", ")),
        ));
    }
    match rule.check {
        Some(Check::Password) => check_password(text),
        Some(Check::Zone) if !call.region.has_zone(text) => Err(ArgError::new(
            param,
            format!(
                "{text:?} is not a zone of {region} (zones look like {region}-1)",
                region = call.region
            ),
        )),
        Some(Check::Ipv4) if text.parse::<std::net::Ipv4Addr>().is_err() => {
            Err(ArgError::new(param, "must be an IPv4 address"))
        }
        _ => Ok(()),
    }
}

/// Puts a parameter's value (and what it derives) into `attrs`; a secret becomes its
/// hash.
async fn set_attributes(
    attrs: &mut Map<String, Value>,
    rule: &ParamRule,
    value: &Value,
) -> Result<(), EngineError> {
    if let (Some(attribute), Some((key, merge)), Value::Array(items)) =
        (rule.attribute, rule.keyed, value)
    {
        attrs.insert(attribute.into(), keyed_merge(items, key, merge));
        return Ok(());
    }
    if let Some(attribute) = rule.attribute {
        let stored = match (rule.secret, value) {
            (true, Value::String(secret)) => json!(hash_secret(secret).await?),
            _ => value.clone(),
        };
        attrs.insert(attribute.into(), stored);
    }
    if let (Some((attribute, table)), Some(text)) = (&rule.derive, value.as_str()) {
        if let Some((_, derived)) = table.iter().find(|(from, _)| *from == text) {
            attrs.insert((*attribute).into(), json!(derived));
        }
    }
    Ok(())
}

/// The merge patch (RFC 7396) of a keyed change: `{key: {fields}}` to add or update,
/// `{key: null}` to remove.
fn keyed_merge(items: &[Value], key: &str, merge: Merge) -> Value {
    let entries: Map<String, Value> = items
        .iter()
        .filter_map(|item| {
            let mut fields = item.as_object()?.clone();
            let id = match fields.remove(key)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let change = match merge {
                Merge::Remove => Value::Null,
                Merge::Add | Merge::Update => Value::Object(fields),
            };
            Some((id, change))
        })
        .collect();
    Value::Object(entries)
}

/// Every reference in the call's `objects` parameters names a resource the account
/// has in the call's region.
pub async fn check_references(
    call: &Call,
    rules: &[ParamRule],
    store: &dyn Store,
) -> Result<(), EngineError> {
    for rule in rules {
        let Some(Value::Array(items)) = call.params.get(rule.name) else {
            continue;
        };
        for field in &rule.fields {
            let Some(kind) = field.reference else {
                continue;
            };
            let named: Vec<(String, ResourceId)> = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let text = item.get(field.name)?.as_str()?;
                    Some((
                        format!("{}.{i}.{}", rule.name, field.name),
                        ResourceId::from_stored(text.to_owned()),
                    ))
                })
                .collect();
            if named.is_empty() {
                continue;
            }
            let filter = ResourceFilter {
                kind: kind.kind.to_owned(),
                region: call.region,
                ids: named.iter().map(|(_, id)| id.clone()).collect(),
                states: Vec::new(),
                search: None,
                name_attr: "",
                attr_in: Vec::new(),
            };
            let page = Page {
                offset: 0,
                limit: named.len() as u64,
            };
            let found = store.resources(call.account, filter, page).await?;
            if let Some((param, id)) = named
                .iter()
                .find(|(_, id)| !found.items.iter().any(|r| &r.id == id))
            {
                return Err(ArgError::new(
                    param,
                    format!("{} {id} does not exist in {}", kind.noun, call.region),
                )
                .into());
            }
        }
    }
    Ok(())
}

fn generator_applies(generator: &Generator, values: &[(&ParamRule, Option<Value>)]) -> bool {
    let value_of = |name: &str| {
        values
            .iter()
            .find(|(rule, _)| rule.name == name)
            .and_then(|(_, value)| value.clone())
    };
    let truthy = |value: &Value| match value {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64() != Some(0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    };
    match (generator.when, generator.when_absent) {
        (None, _) => true,
        (Some(when), fallback) => match value_of(when) {
            Some(value) => truthy(&value),
            None => fallback.and_then(value_of).is_some_and(|v| truthy(&v)),
        },
    }
}

fn generate(kind: GeneratorKind) -> Value {
    let [a, b, c]: [u8; 3] = rand::random();
    let first = match kind {
        GeneratorKind::PrivateIpv4 => 10,
        GeneratorKind::PublicIpv4 => 43,
    };
    json!(format!("{first}.{a}.{b}.{}", c.max(2)))
}

const PASSWORD_SYMBOLS: &str = "()`~!@#$%^&*-+=_|{}[]:;'<>,.?/";

/// The password rules; the password itself is never repeated in a message.
fn check_password(password: &str) -> Result<(), ArgError> {
    let length = password.chars().count();
    let classes = [
        password.chars().any(|c| c.is_ascii_lowercase()),
        password.chars().any(|c| c.is_ascii_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| PASSWORD_SYMBOLS.contains(c)),
    ]
    .iter()
    .filter(|present| **present)
    .count();
    let allowed = password
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || PASSWORD_SYMBOLS.contains(c));
    if !(8..=30).contains(&length) || classes < 3 || !allowed {
        return Err(ArgError::new(
            "password",
            format!(
                "must be 8 to 30 characters with at least three of: lower case, upper case, digits, symbols ({PASSWORD_SYMBOLS})"
            ),
        ));
    }
    Ok(())
}

/// An Argon2id hash (hashing is slow on purpose, so it runs off the async threads).
async fn hash_secret(secret: &str) -> Result<String, EngineError> {
    let secret = secret.to_owned();
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| EngineError::Internal(format!("secret hashing failed: {e}")))
    })
    .await
    .map_err(|e| EngineError::Internal(format!("secret hashing panicked: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn call(params: Value) -> Call {
        crate::catalog::tests::call("RunInstances", params)
    }

    async fn run(params: Value, count: usize) -> Result<Prepared, EngineError> {
        let catalog = Catalog::builtin();
        let op = catalog.operation("RunInstances").unwrap();
        prepare(&call(params), op.params, op.generate, Some(count)).await
    }

    fn refusal(result: Result<Prepared, EngineError>) -> String {
        match result {
            Err(EngineError::InvalidArgument(e)) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn defaults_derivations_and_generated_values_fill_new_resources() {
        let prepared = run(json!({"imageId": "img-eb30mz89", "cpu": "4"}), 2)
            .await
            .unwrap();
        assert_eq!(prepared.new_resources.len(), 2);
        for attrs in &prepared.new_resources {
            assert_eq!(attrs["zone"], "ap-guangzhou-1", "a {{region}} default");
            assert_eq!(attrs["cpu"], 4);
            assert_eq!(attrs["mem"], 2);
            assert_eq!(attrs["instanceName"], "Unnamed");
            assert_eq!(attrs["os"], "Debian 12.0 64bit");
            assert!(attrs["lanIp"].as_str().unwrap().starts_with("10."));
            assert!(
                attrs["wanIp"].as_str().unwrap().starts_with("43."),
                "bandwidth 1"
            );
        }
        let private = run(
            json!({"bandwidth": "0", "privateIpAddresses": ["10.1.1.1", "10.1.1.2"]}),
            2,
        )
        .await
        .unwrap();
        assert_eq!(
            private.new_resources[1]["lanIp"], "10.1.1.2",
            "one per resource"
        );
        assert!(
            !private.new_resources[0].contains_key("wanIp"),
            "no bandwidth, no wanIp: no public address"
        );
        let forced = run(json!({"bandwidth": "0", "wanIp": "1"}), 1)
            .await
            .unwrap();
        assert!(
            forced.new_resources[0].contains_key("wanIp"),
            "wanIp decides first"
        );
    }

    #[tokio::test]
    async fn secrets_are_hashed_and_never_stored() {
        let prepared = run(json!({"password": "Secr3t!pass", "instanceName": "w"}), 1)
            .await
            .unwrap();
        let hash = prepared.new_resources[0]["passwordHash"].as_str().unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!prepared.stored_params.contains_key("password"));
        assert_eq!(prepared.stored_params["instanceName"], "w");
    }

    #[tokio::test]
    async fn refusals_name_the_parameter_and_the_rule() {
        let cases = [
            (
                json!({"imageId": "img-nope"}),
                "parameter imageId \"img-nope\" is not one of img-22trbn9x",
            ),
            (
                json!({"zoneId": "ap-shanghai-1"}),
                "parameter zoneId \"ap-shanghai-1\" is not a zone of ap-guangzhou",
            ),
            (
                json!({"cpu": "0"}),
                "parameter cpu must be an integer from 1 to 256",
            ),
            (
                json!({"privateIpAddresses": ["10.0.0.1", "bad"]}),
                "parameter privateIpAddresses.1 must be an IPv4 address",
            ),
            (
                json!({"privateIpAddresses": ["10.0.0.1"]}),
                "parameter privateIpAddresses names 1 values for 2 new resources",
            ),
            (
                json!({"password": "short"}),
                "parameter password must be 8 to 30 characters",
            ),
            (
                json!({"instanceName": "x".repeat(61)}),
                "parameter instanceName must be at most 60 characters",
            ),
            (
                json!({"wanIp": "maybe"}),
                "parameter wanIp must be 0, 1, true or false",
            ),
        ];
        for (params, expected) in cases {
            let message = refusal(run(params.clone(), 2).await);
            assert!(message.starts_with(expected), "{params}: {message}");
            assert!(
                !message.contains("short\""),
                "no secret in messages: {message}"
            );
        }
    }

    #[tokio::test]
    async fn an_update_patches_only_what_was_given() {
        let catalog = Catalog::builtin();
        let op = catalog.operation("ResetInstances").unwrap();
        let given = call(json!({"instanceId": "ins-aaaaaaaa", "imageId": "img-9qabwvbn"}));
        let prepared = prepare(&given, op.params, op.generate, None).await.unwrap();
        assert_eq!(
            Value::Object(prepared.patch),
            json!({"imageId": "img-9qabwvbn", "os": "CentOS 7.9 64bit"})
        );
        let required = catalog.operation("ModifyInstanceAttributes").unwrap();
        let missing = prepare(&call(json!({})), required.params, &[], None).await;
        assert_eq!(refusal(missing), "parameter instanceName is required");
    }
}
