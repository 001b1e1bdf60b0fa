//! The top-level `datapath` key. A schema type of its own, so that the config does not
//! depend on the datapath; the agent maps it to the datapath's mode.

use serde::Deserialize;

/// How bytes flow once a connection is handed off (`datapath = "auto"` etc.).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// sockmap when the kernel program is loaded and both sockets enter the map, else splice.
    #[default]
    Auto,
    /// Like auto, but the agent refuses to start without the kernel program.
    Sockmap,
    /// splice(2) through a pipe.
    Splice,
    /// A userspace copy.
    Copy,
}
