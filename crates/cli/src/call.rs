//! `qtask call ACTION [NAME=VALUE | --NAME VALUE]… [--wait]`: one signed call, its
//! JSON answer on stdout, and optionally a wait until every task it started is final.

use crate::connection::ConnectionArgs;
use crate::exit::{answer_code, Exit};
use crate::friendly::{self, FlagParam};
use crate::{output, wait};
use qtask_engine::catalog::Catalog;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The action, e.g. DescribeInstances or StartInstances.
    pub action: String,
    /// Parameters as NAME=VALUE (lists as NAME.N=VALUE); or write --NAME VALUE, with
    /// lists as --NAME a,b or --NAME a --NAME b, and a boolean as a bare --NAME.
    #[arg(value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Wait until every task the call started is final, showing each resource's
    /// progress on stderr; exit 1 if any failed.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 1).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub wait_timeout: u64,
    /// Catalog files that declare the server's extra actions, so that their list
    /// parameters take comma lists [env: QTASK_CATALOGS].
    #[arg(
        long = "catalog",
        env = "QTASK_CATALOGS",
        value_delimiter = ',',
        hide_env = true
    )]
    pub catalogs: Vec<PathBuf>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// The `--NAME [VALUE]` parameters, split off before clap parses the rest
    /// ([`friendly::split_call_args`]).
    #[arg(skip)]
    pub flags: Vec<FlagParam>,
}

pub const EXAMPLES: &str = "\
Examples:
  qtask call DescribeInstances --limit 5
  qtask call RunInstances --goodsNum 2 --instanceName web --wait
  qtask call StopInstances --instanceIds ins-1a2b3c4d,ins-5e6f7a8b --forceStop --wait
  qtask call StopInstances instanceIds.0=ins-1a2b3c4d instanceIds.1=ins-5e6f7a8b
  qtask call DescribeTaskResult requestId=7
  qtask call StartInstances --instanceIds ins-1a2b3c4d --wait --profile prod

A flag of qtask itself (--endpoint, --region, --wait, …) is never sent as a parameter:
write such a parameter as NAME=VALUE.";

/// Runs the call: prints the answer, then follows its tasks if asked to.
pub async fn run(args: CallArgs) -> anyhow::Result<Exit> {
    let catalog = if args.catalogs.is_empty() {
        Catalog::builtin()
    } else {
        crate::catalog::load(&args.catalogs)?.0
    };
    let params = friendly::build(&catalog, &args.action, &args.params, args.flags)?;
    let client = Arc::new(args.connection.client()?);
    let answer = client.call(&args.action, params).await?;
    output::print_json(&answer);
    // Only an accepted call (0) or a partly accepted chain (5400) started tasks.
    if !args.wait || !matches!(answer_code(&answer), 0 | 5400) {
        return Ok(Exit::from_success(answer_code(&answer) == 0));
    }
    wait::follow(client, &answer, Duration::from_secs(args.wait_timeout)).await
}
