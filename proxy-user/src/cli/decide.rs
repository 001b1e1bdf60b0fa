//! `sockgate decide -c FILE --fqdn NAME`: print the policy decision for one connection as
//! a JSON object, e.g. `{"action":"allow","rule":"github","fqdn":"api.github.com","reason":"rule"}`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::policy::Query;
use crate::snapshot::Snapshot;
use crate::tls::Protocol;

/// Arguments of `sockgate decide`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// The server name (as an SNI or CONNECT host would carry it); leave it out for a
    /// connection without a name.
    #[arg(long, value_name = "NAME")]
    pub fqdn: Option<String>,
    /// The client's address.
    #[arg(long, value_name = "IP")]
    pub source: Option<IpAddr>,
    /// The destination port.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// What the client's first bytes look like: tls, ssh, http, unknown or none.
    #[arg(long, value_name = "P", default_value = "tls")]
    pub protocol: Protocol,
}

/// Prints the decision; exits 0 whatever it is (an invalid name is a deny, not an error).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (snapshot, _) = Snapshot::load(&args.config)?;
    let decision = snapshot.policy.decide(&Query {
        fqdn: args.fqdn.as_deref(),
        source: args.source,
        port: args.port,
        protocol: args.protocol,
    });
    println!("{}", serde_json::to_string(&decision)?);
    Ok(ExitCode::SUCCESS)
}
