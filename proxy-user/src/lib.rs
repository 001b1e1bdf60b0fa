//! sockgate: an FQDN-filtering forward proxy whose data plane is an in-kernel splice.
//!
//! Layout, one concept per module:
//! - [`config`]: the TOML config, its defaults and validation (the rules aside).
//! - [`names`]: FQDN normalisation and validation.
//! - [`policy`]: the compiled FQDN policy (which checks the rules) and its decisions.
//! - [`snapshot`]: one config load: config, compiled policy, limits and resolver.
//! - [`tls`]: the incremental ClientHello assembler and first-bytes classifier.
//! - [`cli`]: the subcommands (`run`, `check`, `decide`, `doctor`, `relay`, `status`).
//! - [`agent`]: `sockgate run`: listeners, reload and shutdown.
//! - [`watch`]: `run --watch`: the config's directories, watched for changes.
//! - [`source`]: `[source] url`: the config fetched over HTTPS, polled and cached.
//! - [`session`]: one connection's flow, from accept to close.
//! - [`pulse`]: the lifecycle phase and idle tick the agent sends every session, and the
//!   wait until a relayed connection is idle or closed.
//! - [`connect_request`]: the CONNECT request parser.
//! - [`proxy_header`]: the PROXY protocol header, read from a balancer and sent upstream.
//! - [`upstream`]: resolving and connecting to servers.
//! - [`events`]: the JSON decision log.
//! - [`ebpf`]: loading the kernel program, its maps and the aya-log reader.
//! - [`datapath`]: handing a socket pair to the kernel, with splice(2) and copy fallbacks.
//! - [`relay`]: a plain TCP relay over the datapath, for benchmarks and tests.
//! - [`sockopt`]: the few raw socket options the datapath needs.
//! - [`notify`]: systemd readiness notifications.
//! - [`doctor`]: `sockgate doctor`'s host checks.
//! - [`admin`]: the admin endpoint (metrics, open connections, readiness) and what the
//!   agent and sessions report to it.
//! - [`task_size`]: why relayed connections' futures are kept small, and the helper for it.

#![expect(
    clippy::manual_async_fn,
    reason = "relayed connections' futures are async blocks, not async fns: see task_size"
)]

pub mod admin;
pub mod agent;
pub mod cli;
pub mod config;
pub mod connect_request;
pub mod datapath;
pub mod doctor;
pub mod ebpf;
pub mod events;
pub mod kernel_layout;
pub mod names;
pub mod notify;
pub mod policy;
pub mod proxy_header;
pub mod pulse;
pub mod relay;
pub mod session;
pub mod snapshot;
pub mod sockopt;
pub mod source;
pub mod task_size;
pub mod tls;
pub mod upstream;
pub mod watch;
