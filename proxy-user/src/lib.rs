//! sockgate: an FQDN-filtering forward proxy whose data plane is an in-kernel splice.
//!
//! Layout, one concept per module:
//! - [`config`]: the TOML config, its defaults and validation.
//! - [`names`]: FQDN normalisation and validation.
//! - [`policy`]: the compiled FQDN policy and its decisions.
//! - [`tls`]: the incremental ClientHello assembler and first-bytes classifier.
//! - [`cli`]: the `check` and `decide` subcommands.
//! - [`ebpf`]: loading the kernel program, its maps and the aya-log reader.
//! - [`datapath`]: handing a socket pair to the kernel, with splice(2) and copy fallbacks.
//! - [`relay`]: a plain TCP relay over the datapath, for benchmarks and tests.
//! - [`sockopt`]: the few raw socket options the datapath needs.

pub mod cli;
pub mod config;
pub mod datapath;
pub mod ebpf;
pub mod names;
pub mod policy;
pub mod relay;
pub mod sockopt;
pub mod tls;
