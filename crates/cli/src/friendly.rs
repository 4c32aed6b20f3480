//! `qtask call`'s parameters as people type them: `name=value`, `--name value`,
//! `--name=value`, lists as `--ids a,b`, repeated `--ids a --ids b` or `ids.0=a`, and
//! a boolean as a bare `--flag`. Everything becomes the protocol's flat `name[.N]=value`
//! pairs.

use crate::exit::CliError;
use qtask_engine::catalog::describe::FilterMatch;
use qtask_engine::catalog::params::ParamKind;
use qtask_engine::catalog::{Catalog, Handler, Targets};
use std::ffi::OsString;

/// A parameter given as `--name [value]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagParam {
    pub name: String,
    /// `None` for a bare `--name` (a boolean switched on).
    pub value: Option<String>,
}

/// Splits the process arguments of `qtask call …`: flags `call` itself knows (and
/// their values) stay for clap; other `--name [value]` become parameters. Arguments of
/// other commands are returned untouched.
pub fn split_call_args(
    args: Vec<OsString>,
    call: &clap::Command,
) -> (Vec<OsString>, Vec<FlagParam>) {
    // `call` must be the first argument: the top-level command has no options of its
    // own besides --help and --version.
    if args.get(1).and_then(|a| a.to_str()) != Some(call.get_name()) {
        return (args, Vec::new());
    }
    let known: Vec<(String, bool)> = call
        .get_arguments()
        .flat_map(|arg| {
            let takes_value = arg.get_action().takes_values();
            arg.get_long_and_visible_aliases()
                .into_iter()
                .flatten()
                .map(move |long| (long.to_owned(), takes_value))
        })
        .chain([("help".to_owned(), false)])
        .collect();
    let mut kept: Vec<OsString> = args[..2].to_vec();
    let mut flags = Vec::new();
    let mut rest = args.into_iter().skip(2).peekable();
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str().map(str::to_owned) else {
            kept.push(arg);
            continue;
        };
        if text == "--" {
            kept.push(arg);
            kept.extend(rest);
            break;
        }
        let Some(flag) = text.strip_prefix("--") else {
            kept.push(arg);
            continue;
        };
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        if let Some((_, takes_value)) = known.iter().find(|(long, _)| long == name) {
            kept.push(arg);
            if *takes_value && inline_value.is_none() {
                kept.extend(rest.next());
            }
            continue;
        }
        let value = inline_value.or_else(|| {
            rest.next_if(|next| !next.to_str().is_some_and(|n| n.starts_with("--")))
                .map(|next| next.to_string_lossy().into_owned())
        });
        flags.push(FlagParam {
            name: name.to_owned(),
            value,
        });
    }
    (kept, flags)
}

/// What the catalog says a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    List,
    Bool,
    /// A single value, or a parameter the catalog does not describe.
    Other,
}

fn shape(catalog: &Catalog, action: &str, name: &str) -> Shape {
    match catalog.get(action).map(|spec| &spec.handler) {
        Some(Handler::Mutate(operation)) => {
            if matches!(operation.targets, Targets::Many(ids) if ids == name) {
                return Shape::List;
            }
            match operation.params.iter().find(|rule| rule.name == name) {
                Some(rule) if rule.kind == ParamKind::List => Shape::List,
                Some(rule) if rule.kind == ParamKind::Bool => Shape::Bool,
                _ => Shape::Other,
            }
        }
        Some(Handler::Describe(spec)) => {
            let is_list = spec.filters.iter().any(|filter| {
                filter.param == name
                    && (filter.matches == FilterMatch::Ids
                        || (filter.matches == FilterMatch::Attribute && filter.list))
            });
            if is_list {
                Shape::List
            } else {
                Shape::Other
            }
        }
        _ => Shape::Other,
    }
}

/// The flat parameters of a call of `action` from `NAME=VALUE` arguments and `--name`
/// flags. A name the catalog declares a list takes comma lists; any name given more
/// than once becomes a list; `name.N…` entries pass through as written.
pub fn build(
    catalog: &Catalog,
    action: &str,
    pairs: &[String],
    flags: Vec<FlagParam>,
) -> Result<Vec<(String, String)>, CliError> {
    let mut given: Vec<FlagParam> = pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(name, value)| FlagParam {
                    name: name.to_owned(),
                    value: Some(value.to_owned()),
                })
                .ok_or_else(|| CliError::usage(format!("{pair:?} is not NAME=VALUE")))
        })
        .collect::<Result<_, _>>()?;
    given.extend(flags);

    let mut out: Vec<(String, String)> = Vec::new();
    // Plain names in order of first appearance, with their values.
    let mut plain: Vec<(String, Vec<Option<String>>)> = Vec::new();
    for param in given {
        if param.name.is_empty() {
            return Err(CliError::usage("a parameter needs a name"));
        }
        if param.name.contains('.') {
            let value = param
                .value
                .ok_or_else(|| CliError::usage(format!("--{} needs a value", param.name)))?;
            out.push((param.name, value));
            continue;
        }
        match plain.iter_mut().find(|(name, _)| *name == param.name) {
            Some((_, values)) => values.push(param.value),
            None => plain.push((param.name, vec![param.value])),
        }
    }
    for (name, values) in plain {
        let shape = shape(catalog, action, &name);
        let values = values
            .into_iter()
            .map(|value| match (value, shape) {
                (Some(value), _) => Ok(value),
                (None, Shape::Bool) => Ok("true".to_owned()),
                (None, _) => Err(CliError::usage(format!(
                    "--{name} needs a value: --{name} VALUE or --{name}=VALUE"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let items: Vec<String> = match shape {
            Shape::List => values
                .iter()
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect(),
            Shape::Bool | Shape::Other if values.len() > 1 => values,
            Shape::Bool | Shape::Other => {
                out.extend(values.into_iter().map(|value| (name.clone(), value)));
                continue;
            }
        };
        let prefix = format!("{name}.");
        if out.iter().any(|(given, _)| given.starts_with(&prefix)) {
            return Err(CliError::usage(format!(
                "{name} is given both as a list and as {name}.N=…: use one form"
            )));
        }
        out.extend(
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| (format!("{name}.{index}"), item)),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn call_command() -> Command {
        Command::new("call")
            .arg(Arg::new("action"))
            .arg(Arg::new("params").num_args(0..))
            .arg(Arg::new("wait").long("wait").action(ArgAction::SetTrue))
            .arg(Arg::new("endpoint").long("endpoint"))
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn flag(name: &str, value: Option<&str>) -> FlagParam {
        FlagParam {
            name: name.into(),
            value: value.map(str::to_owned),
        }
    }

    #[test]
    fn unknown_flags_become_parameters_and_known_ones_stay() {
        let (kept, flags) = split_call_args(
            os(&[
                "qtask",
                "call",
                "StopInstances",
                "--instanceIds",
                "ins-a,ins-b",
                "--wait",
                "--endpoint",
                "http://x:1",
                "--forceStop",
                "--limit=5",
                "goodsNum=2",
            ]),
            &call_command(),
        );
        assert_eq!(
            kept,
            os(&[
                "qtask",
                "call",
                "StopInstances",
                "--wait",
                "--endpoint",
                "http://x:1",
                "goodsNum=2"
            ])
        );
        assert_eq!(
            flags,
            vec![
                flag("instanceIds", Some("ins-a,ins-b")),
                flag("forceStop", None),
                flag("limit", Some("5")),
            ]
        );
        // Other commands are not touched.
        let args = os(&["qtask", "serve", "--instanceIds", "x"]);
        assert_eq!(split_call_args(args.clone(), &call_command()).0, args);
    }

    #[test]
    fn lists_from_commas_repeats_and_indexes() {
        let catalog = Catalog::builtin();
        let from_commas = build(
            &catalog,
            "StopInstances",
            &[],
            vec![
                flag("instanceIds", Some("ins-a, ins-b,")),
                flag("forceStop", None),
            ],
        )
        .unwrap();
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            from_commas,
            pairs(&[
                ("instanceIds.0", "ins-a"),
                ("instanceIds.1", "ins-b"),
                ("forceStop", "true")
            ])
        );
        let repeated = build(
            &catalog,
            "StopInstances",
            &[],
            vec![
                flag("instanceIds", Some("ins-a")),
                flag("instanceIds", Some("ins-b")),
            ],
        )
        .unwrap();
        assert_eq!(
            repeated,
            pairs(&[("instanceIds.0", "ins-a"), ("instanceIds.1", "ins-b")])
        );
        let indexed = build(
            &catalog,
            "StopInstances",
            &["instanceIds.0=ins-a".into(), "instanceIds.1=ins-b".into()],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(indexed, repeated);
        // A single value of a declared list is still a list.
        let one = build(
            &catalog,
            "DescribeInstances",
            &[],
            vec![flag("instanceIds", Some("ins-a"))],
        )
        .unwrap();
        assert_eq!(one, pairs(&[("instanceIds.0", "ins-a")]));
    }

    #[test]
    fn scalars_keep_their_commas_and_mixed_forms_are_refused() {
        let catalog = Catalog::builtin();
        let scalars = build(
            &catalog,
            "DescribeTasks",
            &["action=StopInstances".into()],
            vec![flag("status", Some("FAILED,CANCELED"))],
        )
        .unwrap();
        assert_eq!(
            scalars,
            vec![
                ("action".to_owned(), "StopInstances".to_owned()),
                ("status".to_owned(), "FAILED,CANCELED".to_owned())
            ]
        );
        let mixed = build(
            &catalog,
            "StopInstances",
            &["instanceIds.0=ins-a".into()],
            vec![flag("instanceIds", Some("ins-b"))],
        );
        assert!(matches!(mixed, Err(CliError::Usage(m)) if m.contains("use one form")));
        let bare = build(
            &catalog,
            "RunInstances",
            &[],
            vec![flag("instanceName", None)],
        );
        assert!(
            matches!(bare, Err(CliError::Usage(m)) if m.contains("--instanceName needs a value"))
        );
        let not_a_pair = build(&catalog, "DescribeInstances", &["limit".into()], Vec::new());
        assert!(matches!(not_a_pair, Err(CliError::Usage(m)) if m.contains("not NAME=VALUE")));
    }
}
