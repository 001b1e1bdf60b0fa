use super::*;
use crate::admin::connections::{Bytes, Route};

/// The samples of `name` in `text`, as (labels, value).
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name).then(|| (labels, value.parse().unwrap()))
        })
        .collect()
}

fn type_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("# TYPE {name} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

#[test]
fn every_metric_has_its_name_type_and_labels() {
    let table = Arc::new(Connections::default());
    let metrics = Metrics::new(Arc::clone(&table));
    let proxy = metrics.listener("proxy");
    table.open(
        1,
        Arc::clone(&proxy.name),
        "127.0.0.1:4000".parse().unwrap(),
    );
    let took = Duration::from_millis(3);
    let mut line = Decision::new(1, "proxy", "127.0.0.1:4000".parse().unwrap());
    line.reason = "client_hello_malformed: bad_hello".into();
    metrics.decided(&proxy, &line, took);
    // Audit mode: a denial relayed anyway.
    line.enforced = false;
    line.reason = "rule".into();
    metrics.decided(&proxy, &line, took);
    // An allow counts through the listener's own handle.
    line.enforced = true;
    line.action = Action::Allow;
    metrics.decided(&proxy, &line, took);
    metrics.upstream_connected(Duration::from_micros(80));
    metrics.closed(End::Rst, 12);
    metrics.reloaded(true, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    metrics.built(Path::Sockmap);
    metrics.map_entries(Box::new(|| vec![("socks", 2), ("counters", 2)]));
    let text = metrics.encode();
    let types = [
        ("sockgate_connections_total", "counter"),
        ("sockgate_connections_open", "gauge"),
        ("sockgate_bytes_total", "counter"),
        ("sockgate_handshake_seconds", "histogram"),
        ("sockgate_upstream_connect_seconds", "histogram"),
        ("sockgate_closes_total", "counter"),
        ("sockgate_config_last_reload_successful", "gauge"),
        (
            "sockgate_config_last_reload_success_timestamp_seconds",
            "gauge",
        ),
        ("sockgate_kernel_map_entries", "gauge"),
        ("sockgate_repeats_cut_bytes_total", "counter"),
        ("sockgate_build_info", "gauge"),
    ];
    for (name, kind) in types {
        assert_eq!(type_of(&text, name), Some(kind), "{name} in\n{text}");
    }
    let one = |name, labels| assert_eq!(samples(&text, name), [(labels, 1.0)], "{text}");
    let decided = samples(&text, "sockgate_connections_total");
    let enforced =
        r#"listener="proxy",action="deny",enforced="true",reason="client_hello_malformed""#;
    let audited = r#"listener="proxy",action="deny",enforced="false",reason="rule""#;
    assert!(decided.contains(&(enforced, 1.0)), "{decided:?}");
    assert!(decided.contains(&(audited, 1.0)), "{decided:?}");
    let allowed = r#"listener="proxy",action="allow",enforced="true",reason="rule""#;
    let by_default = r#"listener="proxy",action="allow",enforced="true",reason="default""#;
    assert!(decided.contains(&(allowed, 1.0)), "{decided:?}");
    // Its series exist from the listener's start.
    assert!(decided.contains(&(by_default, 0.0)), "{decided:?}");
    assert_eq!(decided.len(), 4, "{decided:?}");
    one(
        "sockgate_connections_open",
        r#"listener="proxy",state="handshake",datapath="none""#,
    );
    one(
        "sockgate_build_info",
        concat!(
            r#"version=""#,
            env!("CARGO_PKG_VERSION"),
            r#"",datapath="sockmap""#
        ),
    );
    one("sockgate_config_last_reload_successful", "");
    assert_eq!(
        samples(&text, "sockgate_handshake_seconds_count"),
        [(r#"listener="proxy""#, 3.0)]
    );
    assert_eq!(
        samples(&text, "sockgate_upstream_connect_seconds_count"),
        [("", 1.0)]
    );
    let bucket = samples(&text, "sockgate_upstream_connect_seconds_bucket");
    assert!(bucket.contains(&(r#"le="0.0001""#, 1.0)), "{bucket:?}");
    assert_eq!(
        samples(&text, "sockgate_repeats_cut_bytes_total"),
        [("", 12.0)]
    );
    let closes = samples(&text, "sockgate_closes_total");
    assert_eq!(closes.len(), 5, "every end has a sample: {closes:?}");
    assert!(closes.contains(&(r#"end="rst""#, 1.0)), "{closes:?}");
    assert_eq!(
        samples(
            &text,
            "sockgate_config_last_reload_success_timestamp_seconds"
        ),
        [("", 1_700_000_000.0)]
    );
    let maps = samples(&text, "sockgate_kernel_map_entries");
    assert_eq!(maps, [(r#"map="socks""#, 2.0), (r#"map="counters""#, 2.0)]);
    // No label carries a name the client chose.
    assert!(!text.contains("example.com"));
}

#[test]
fn bytes_of_an_open_connection_count_and_do_not_go_down_at_close() {
    let table = Arc::new(Connections::default());
    let metrics = Metrics::new(Arc::clone(&table));
    let proxy = metrics.listener("proxy");
    table.open(
        1,
        Arc::clone(&proxy.name),
        "127.0.0.1:4000".parse().unwrap(),
    );
    let live = || Bytes {
        up: 1000,
        down: 5000,
    };
    let route = Route {
        fqdn: Some("example.com".into()),
        ..Route::default()
    };
    table.relaying(1, route, Path::Sockmap, Arc::new(live), 0);
    let up = r#"listener="proxy",direction="up",datapath="sockmap""#;
    let down = r#"listener="proxy",direction="down",datapath="sockmap""#;
    let before = metrics.encode();
    assert_eq!(
        samples(&before, "sockgate_bytes_total"),
        [(up, 1000.0), (down, 5000.0)]
    );
    assert_eq!(
        samples(&before, "sockgate_connections_open"),
        [(
            r#"listener="proxy",state="relaying",datapath="sockmap""#,
            1.0
        )]
    );
    // The close line counts fewer bytes than were live (the kernel's counters went
    // first): the counter holds.
    table.close(1, Some(Path::Sockmap), Bytes { up: 10, down: 5001 });
    let after = metrics.encode();
    assert_eq!(
        samples(&after, "sockgate_bytes_total"),
        [(up, 1000.0), (down, 5001.0)]
    );
    // The gauge reads 0 instead of vanishing.
    assert_eq!(
        samples(&after, "sockgate_connections_open"),
        [(
            r#"listener="proxy",state="relaying",datapath="sockmap""#,
            0.0
        )]
    );
}

#[test]
fn reason_tokens_stop_at_the_colon() {
    assert_eq!(reason_token("invalid_name: ip_literal"), "invalid_name");
    assert_eq!(reason_token("rule"), "rule");
    assert_eq!(reason_token(""), "");
}
