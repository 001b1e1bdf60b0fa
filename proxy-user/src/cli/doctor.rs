//! `sockgate doctor [-c FILE] [--json]`: can this host run the sockmap datapath?
//!
//! Exit codes: 0 when the sockmap datapath will be used (no check failed), 1 when it will
//! not, 2 when doctor cannot run (the config cannot be read or is invalid; a one-line
//! error on stderr, nothing on stdout).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::doctor;
use crate::snapshot::Snapshot;

/// Arguments of `sockgate doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file: adds its listeners' needs and sizes the descriptor check.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON object instead of a line per check.
    #[arg(long)]
    pub json: bool,
}

/// Runs every check and prints them.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = args.config.as_deref().map(Snapshot::load).transpose();
    let config = match loaded.map(|l| l.map(|(_, config)| config)) {
        Ok(config) => config,
        Err(err) => {
            // Exit 1 means "no sockmap"; a config that cannot be read is another answer.
            eprintln!("sockgate doctor: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = doctor::run(config.as_ref());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.sockmap {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
