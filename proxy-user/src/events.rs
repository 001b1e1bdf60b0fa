//! The decision log: one JSON line per event on stdout. Every connection gets a `decision`
//! line and a `close` line with the same `conn` id.

use std::{
    io::Write as _,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    datapath::{End, Path},
    policy::Action,
    tls::Protocol,
};

/// Where a connection's name came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FqdnSource {
    Sni,
    Connect,
    None,
}

/// The `decision` line.
#[derive(Debug, Serialize)]
pub struct Decision {
    pub conn: u64,
    pub listener: String,
    /// The client: the TCP peer, or on a `proxy_protocol` listener the address its PROXY
    /// header names.
    pub client: SocketAddr,
    /// The TCP peer, when a PROXY header named another client (the balancer); left out
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<SocketAddr>,
    /// Where sockgate connected (or would have): `ip:port`, or `host:port` before resolution.
    pub dst: Option<String>,
    pub fqdn: Option<String>,
    pub fqdn_source: FqdnSource,
    pub protocol: Protocol,
    pub alpn: Vec<String>,
    /// The negotiated or offered TLS version, e.g. "1.3".
    pub tls_version: Option<String>,
    pub ech: bool,
    /// The policy's answer, whether or not it was carried out.
    pub action: Action,
    /// False when `action` was not carried out (a deny in audit mode); left out when true.
    #[serde(skip_serializing_if = "is_true")]
    pub enforced: bool,
    pub rule: Option<String>,
    pub reason: String,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Decision {
    /// A connection's record before anything is known about it: a deny without a reason.
    pub fn new(conn: u64, listener: &str, client: SocketAddr) -> Self {
        Self {
            conn,
            listener: listener.to_owned(),
            client,
            via: None,
            dst: None,
            fqdn: None,
            fqdn_source: FqdnSource::None,
            protocol: Protocol::None,
            alpn: Vec::new(),
            tls_version: None,
            ech: false,
            action: Action::Deny,
            enforced: true,
            rule: None,
            reason: String::new(),
        }
    }
}

/// The `close` line.
#[derive(Debug, Serialize)]
pub struct Close {
    pub conn: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// The path that carried the bytes; `None` when the connection was never relayed.
    pub datapath: Option<Path>,
    pub end: End,
    /// Bytes the kernel handed the verdict a second time, which it cut (sockmap only; see
    /// README, "A kernel bug the verdict works around"). Left out when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub repeats_cut: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct Line<'a, T> {
    ts: String,
    event: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

fn emit<T: Serialize>(event: &str, body: &T) {
    let line = Line {
        ts: timestamp(SystemTime::now()),
        event,
        body,
    };
    if let Ok(json) = serde_json::to_string(&line) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take connections down with it.
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }
}

pub fn decision(d: &Decision) {
    emit("decision", d);
}

pub fn close(c: &Close) {
    emit("close", c);
}

/// The `stats` line, written on SIGUSR1: what an operator checks for leaks.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections open now, handshakes included.
    pub open: usize,
    /// Open file descriptors of the process.
    pub fds: usize,
    /// Resident memory of the process, in KiB.
    pub rss_kib: u64,
    /// Entries of the kernel maps; absent without the eBPF program.
    pub maps: Option<crate::ebpf::MapCounts>,
}

pub fn stats(s: &Stats) {
    emit("stats", s);
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-28T09:41:07.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    // humantime panics before the epoch; a clock set that far back logs the epoch instead.
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
}

/// "1.3" for 0x0304 and so on.
pub fn tls_version_name(v: u16) -> String {
    match v {
        0x0304 => "1.3".into(),
        0x0303 => "1.2".into(),
        0x0302 => "1.1".into(),
        0x0301 => "1.0".into(),
        other => format!("0x{other:04x}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_859_467_123);
        assert_eq!(timestamp(t), "2026-11-28T09:51:07.123Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_859_241_031);
        assert_eq!(timestamp(t), "2026-11-28T09:47:21.031Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(timestamp(before), "1970-01-01T00:00:00.000Z");
    }
}
