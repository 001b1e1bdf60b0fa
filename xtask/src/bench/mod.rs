//! `cargo xtask bench <what>`.

mod datapath;
mod policy;
mod stats;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// direct vs sockmap vs splice vs copy: throughput, CPU per GiB, round trip.
    Datapath(datapath::Args),
    /// 1,000,000 rules: load time, resident memory, lookup p50/p99.
    Policy(policy::Args),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    match args.what {
        What::Datapath(args) => datapath::run(args),
        What::Policy(args) => policy::run(args),
    }
}
