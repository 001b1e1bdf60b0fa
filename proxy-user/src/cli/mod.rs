//! Subcommands of the `sockgate` binary. These are edges: they return `anyhow` errors.

pub mod check;
pub mod decide;
pub mod doctor;
pub mod relay;
pub mod run;
pub mod status;
