//! The agent's decision log: its JSON lines parsed, and the fields every line must carry.

use serde_json::Value;

/// One connection's two log lines.
#[derive(Debug, Clone)]
pub struct Conn {
    pub decision: Value,
    pub close: Value,
}

/// Every complete line of `text`, parsed; a line that is not a JSON object fails the test.
pub(crate) fn parse_events(text: &str) -> Vec<Value> {
    // Only complete lines: the last one may still be on its way.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => v,
            _ => panic!("stdout line is not a JSON object: {line:?}"),
        })
        .collect()
}

/// Checks the fields every decision line carries, with the types the log promises.
pub fn assert_decision_shape(d: &Value) {
    for field in [
        "ts",
        "event",
        "conn",
        "listener",
        "client",
        "dst",
        "fqdn",
        "fqdn_source",
        "protocol",
        "alpn",
        "tls_version",
        "ech",
        "action",
        "rule",
        "reason",
    ] {
        assert!(d.get(field).is_some(), "decision lacks `{field}`: {d}");
    }
    assert!(
        d["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "ts: {d}"
    );
    assert!(d["conn"].as_u64().is_some(), "conn: {d}");
    assert!(d["alpn"].is_array(), "alpn: {d}");
    assert!(d["ech"].is_boolean(), "ech: {d}");
    assert!(
        d["action"] == "allow" || d["action"] == "deny",
        "action: {d}"
    );
}

/// Checks the fields every close line carries.
pub fn assert_close_shape(c: &Value) {
    for field in [
        "ts",
        "event",
        "conn",
        "bytes_up",
        "bytes_down",
        "duration_ms",
        "datapath",
        "end",
    ] {
        assert!(c.get(field).is_some(), "close lacks `{field}`: {c}");
    }
    assert!(c["bytes_up"].as_u64().is_some(), "bytes_up: {c}");
    assert!(c["bytes_down"].as_u64().is_some(), "bytes_down: {c}");
    assert!(c["duration_ms"].as_u64().is_some(), "duration_ms: {c}");
}
