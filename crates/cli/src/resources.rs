//! `qtask instances ls` (DescribeInstances) and `qtask lb ls` (DescribeLoadBalancers).

use crate::connection::ConnectionArgs;
use crate::exit::Exit;
use crate::output::{self, cell, page_footer, table, OutputArgs};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct ResourceArgs<C: clap::Subcommand> {
    #[command(subcommand)]
    pub command: C,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum InstancesCommand {
    /// List instances (DescribeInstances), newest first.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  qtask instances ls\n  qtask instances ls --search web --status 2\n  qtask instances ls --id ins-1a2b3c4d,ins-5e6f7a8b --output json"
    )]
    Ls {
        /// Only these instances (comma list, or repeat the flag).
        #[arg(long, value_delimiter = ',')]
        id: Vec<String>,
        /// Only instances with this legacy status (2 running, 4 stopped, …).
        #[arg(long)]
        status: Option<u32>,
        /// Only instances whose ID or name contains this.
        #[arg(long)]
        search: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum LbCommand {
    /// List load balancers (DescribeLoadBalancers), newest first.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  qtask lb ls\n  qtask lb ls --search shop --output json"
    )]
    Ls {
        /// Only these load balancers (comma list, or repeat the flag).
        #[arg(long, value_delimiter = ',')]
        id: Vec<String>,
        /// Only load balancers whose ID or name contains this.
        #[arg(long)]
        search: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct PageArgs {
    /// At most this many (1 to 100) [server default: 20].
    #[arg(long)]
    pub limit: Option<u32>,
    /// Skip this many.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
}

/// What one listing asks and shows.
struct Listing {
    action: &'static str,
    ids_param: &'static str,
    list_key: &'static str,
    /// Column header and the answer field it shows.
    columns: &'static [(&'static str, &'static str)],
}

const INSTANCES: Listing = Listing {
    action: "DescribeInstances",
    ids_param: "instanceIds",
    list_key: "instanceSet",
    columns: &[
        ("INSTANCE", "instanceId"),
        ("NAME", "instanceName"),
        ("STATE", "statusName"),
        ("STATUS", "status"),
        ("ZONE", "zoneId"),
        ("LAN IP", "lanIp"),
        ("WAN IP", "wanIpSet"),
        ("CREATED", "createTime"),
        ("BUSY WITH", "busyWith"),
    ],
};

const LOAD_BALANCERS: Listing = Listing {
    action: "DescribeLoadBalancers",
    ids_param: "loadBalancerIds",
    list_key: "loadBalancerSet",
    columns: &[
        ("LOAD BALANCER", "loadBalancerId"),
        ("NAME", "loadBalancerName"),
        ("STATE", "statusName"),
        ("TYPE", "loadBalancerType"),
        ("VIP", "loadBalancerVips"),
        ("CREATED", "createTime"),
        ("BUSY WITH", "busyWith"),
    ],
};

pub async fn run_instances(args: ResourceArgs<InstancesCommand>) -> anyhow::Result<Exit> {
    let InstancesCommand::Ls {
        id,
        status,
        search,
        page,
    } = args.command;
    let filters = vec![
        ("status", status.map(|s| s.to_string())),
        ("searchWord", search),
    ];
    list(
        &INSTANCES,
        &args.connection,
        &args.output,
        id,
        filters,
        page,
    )
    .await
}

pub async fn run_lb(args: ResourceArgs<LbCommand>) -> anyhow::Result<Exit> {
    let LbCommand::Ls { id, search, page } = args.command;
    let filters = vec![("searchKey", search)];
    list(
        &LOAD_BALANCERS,
        &args.connection,
        &args.output,
        id,
        filters,
        page,
    )
    .await
}

async fn list(
    listing: &Listing,
    connection: &ConnectionArgs,
    output: &OutputArgs,
    ids: Vec<String>,
    filters: Vec<(&str, Option<String>)>,
    page: PageArgs,
) -> anyhow::Result<Exit> {
    let client = connection.client()?;
    let mut params: Vec<(String, String)> = ids
        .into_iter()
        .enumerate()
        .map(|(index, id)| (format!("{}.{index}", listing.ids_param), id))
        .collect();
    params.extend(
        filters
            .into_iter()
            .chain([("limit", page.limit.map(|l| l.to_string()))])
            .filter_map(|(name, value)| Some((name.to_owned(), value?))),
    );
    params.push(("offset".to_owned(), page.offset.to_string()));
    output::query(&client, listing.action, params, output.format(), |answer| {
        render(listing, answer, page.offset)
    })
    .await
}

fn render(listing: &Listing, answer: &Value, offset: u64) -> String {
    let items = answer[listing.list_key]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let headers: Vec<&str> = listing.columns.iter().map(|(header, _)| *header).collect();
    let rows = items.iter().map(|item| {
        listing
            .columns
            .iter()
            .map(|(_, field)| cell(&item[*field]))
            .collect()
    });
    format!(
        "{}\n{}",
        table(&headers, rows),
        page_footer(answer, items.len(), offset)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_instance_listing_shows_its_columns() {
        let answer = json!({"code": 0, "totalCount": 1, "instanceSet": [{
            "instanceId": "ins-1a2b3c4d", "instanceName": "web", "statusName": "RUNNING",
            "status": 2, "zoneId": "ap-guangzhou-3", "lanIp": "10.0.0.7",
            "wanIpSet": ["43.1.2.3"], "createTime": "2026-11-27 20:46:20", "busyWith": null}]});
        let text = render(&INSTANCES, &answer, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("INSTANCE") && lines[0].contains("BUSY WITH"),
            "{text}"
        );
        for expected in ["ins-1a2b3c4d", "web", "RUNNING", "10.0.0.7", "43.1.2.3"] {
            assert!(lines[1].contains(expected), "{expected} missing: {text}");
        }
    }
}
