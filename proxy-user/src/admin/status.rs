//! The screen of `sockgate status`, from the admin endpoint's `/config` and
//! `/connections` answers. Pure: [`crate::cli::status`] fetches them.

use std::fmt::Write as _;

use super::{ConfigReport, connections::Row};

/// The whole screen: the running config and the last reload, counts by state, and the
/// open connections, oldest first.
pub fn render(config: &ConfigReport, rows: &[Row]) -> String {
    let mut out = String::new();
    let sha = config.sha256.get(..12).unwrap_or(&config.sha256);
    let _ = writeln!(
        out,
        "config:  {} (sha256 {sha}, loaded {})",
        config.path, config.loaded_at
    );
    let reload = match &config.last_reload {
        None => "none since start".to_owned(),
        Some(r) => match &r.error {
            None => format!("ok at {}", r.at),
            Some(err) => format!("failed at {}, the config above still runs: {err}", r.at),
        },
    };
    let _ = writeln!(out, "reload:  {reload}");
    let relaying = rows.iter().filter(|r| r.state == "relaying").count();
    let _ = writeln!(
        out,
        "open:    {} ({} handshake, {relaying} relaying)",
        rows.len(),
        rows.len() - relaying
    );
    if rows.is_empty() {
        return out;
    }
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then(a.conn.cmp(&b.conn)));
    let header = [
        "CONN", "LISTENER", "STATE", "DATAPATH", "AGE", "UP", "DOWN", "CLIENT", "FQDN", "DST",
    ];
    let table: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.conn.to_string(),
                r.listener.clone(),
                r.state.clone(),
                r.datapath.clone().unwrap_or_else(|| "-".into()),
                age(r.age_ms),
                bytes(r.bytes_up),
                bytes(r.bytes_down),
                r.client.to_string(),
                r.fqdn.clone().unwrap_or_else(|| "-".into()),
                r.dst.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    out.push('\n');
    let header = header.map(String::from);
    for row in std::iter::once(&header).chain(&table) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            // Numbers right-aligned, the rest left; the last column unpadded.
            if i == row.len() - 1 {
                line.push_str(cell);
            } else if matches!(i, 0 | 4 | 5 | 6) {
                let _ = write!(line, "{cell:>w$}  ");
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `512 B`, `1.5 KiB`, `200.0 MiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `850ms`, `12s`, `3m04s`, `2h05m`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::Reload;

    fn row(conn: u64, state: &str, age_ms: u64, up: u64, down: u64) -> Row {
        let relaying = state == "relaying";
        Row {
            conn,
            listener: "proxy".into(),
            client: "10.0.0.2:41234".parse().unwrap(),
            dst: relaying.then(|| "10.0.1.2:443".into()),
            fqdn: relaying.then(|| "example.com".into()),
            rule: None,
            state: state.into(),
            datapath: relaying.then(|| "sockmap".into()),
            age_ms,
            bytes_up: up,
            bytes_down: down,
        }
    }

    fn config(last_reload: Option<Reload>) -> ConfigReport {
        ConfigReport {
            path: "/etc/sockgate.toml".into(),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
            loaded_at: "2026-12-02T17:30:01.123Z".into(),
            last_reload,
        }
    }

    #[test]
    fn the_screen() {
        let rows = [
            row(9, "handshake", 120, 517, 0),
            row(3, "relaying", 62_000, 1_300_000, 209_715_200),
        ];
        let reload = Reload {
            at: "2026-12-02T17:31:00.000Z".into(),
            error: Some("line 3, column 1: unknown field `listner`".into()),
        };
        let screen = render(&config(Some(reload)), &rows);
        let expected = "\
config:  /etc/sockgate.toml (sha256 ba7816bf8f01, loaded 2026-12-02T17:30:01.123Z)
reload:  failed at 2026-12-02T17:31:00.000Z, the config above still runs: line 3, column 1: unknown field `listner`
open:    2 (1 handshake, 1 relaying)

CONN  LISTENER  STATE      DATAPATH    AGE       UP       DOWN  CLIENT          FQDN         DST
   3  proxy     relaying   sockmap   1m02s  1.2 MiB  200.0 MiB  10.0.0.2:41234  example.com  10.0.1.2:443
   9  proxy     handshake  -         120ms    517 B        0 B  10.0.0.2:41234  -            -
";
        assert_eq!(screen, expected, "\n{screen}");
    }

    #[test]
    fn nothing_open() {
        let screen = render(&config(None), &[]);
        assert!(
            screen.ends_with("reload:  none since start\nopen:    0 (0 handshake, 0 relaying)\n")
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(200 << 20), "200.0 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_400), "12s");
        assert_eq!(age(184_000), "3m04s");
        assert_eq!(age(7_500_000), "2h05m");
    }
}
