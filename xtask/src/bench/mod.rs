//! `cargo xtask bench [--quick]` runs issue 5's suite (`suite`); `bench datapath` and
//! `bench policy` are the narrower benches.

mod datapath;
mod kmem;
mod peer;
mod policy;
mod report;
mod stats;
mod suite;
mod systems;
mod tls;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    what: Option<What>,
    #[command(flatten)]
    suite: suite::Args,
}

#[derive(clap::Subcommand)]
enum What {
    /// Direct, sockgate on each datapath, HAProxy and nginx through SNI routing: bulk,
    /// parallel bulk, round trip, TLS connection rate, idle memory (the default).
    All(suite::Args),
    /// `sockgate relay` (no TLS, no policy) on each datapath vs direct: throughput, CPU per
    /// GiB, round trip.
    Datapath(datapath::Args),
    /// 1,000,000 rules: load time, resident memory, lookup p50/p99.
    Policy(policy::Args),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    match args.what {
        None => suite::run(args.suite),
        Some(What::All(args)) => suite::run(args),
        Some(What::Datapath(args)) => datapath::run(args),
        Some(What::Policy(args)) => policy::run(args),
    }
}
