//! The admin endpoint from outside: plain HTTP/1.1 GETs, and a real Prometheus (Debian's
//! `prometheus` package) scraping it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    process::{Proc, WAIT},
    programs::require,
    tempdir::TempDir,
};

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends `request` (a whole HTTP/1.1 request) to `addr` and reads the answer to EOF.
/// `None` when nothing accepts the connection or the server closes without answering.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Option<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).ok()?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // The server may answer (and close) before a large request is all written.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        body: body.to_owned(),
    })
}

/// `method path` on `addr`, with `Connection: close`.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Option<Answer> {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes())
}

/// `GET path` on `addr`, failing the test unless it answers 200.
pub fn get(addr: SocketAddr, path: &str) -> String {
    match request(addr, "GET", path) {
        Some(Answer { status: 200, body }) => body,
        other => panic!("GET {path} at {addr}: {other:?}"),
    }
}

/// `GET /connections`, parsed.
pub fn connections(addr: SocketAddr) -> Vec<Value> {
    let body = get(addr, "/connections");
    let value: Value = serde_json::from_str(&body).expect("/connections is JSON");
    value.as_array().expect("/connections is an array").clone()
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping one target every second, with its data in a temp dir.
pub struct Prometheus {
    web: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts `prometheus` on `web`, scraping `target`'s `/metrics` every second, in the
    /// calling thread's network namespace; returns once it has scraped the target.
    pub fn start(target: SocketAddr, web: SocketAddr) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: sockgate\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let proc = Proc::spawn(
            "prometheus",
            Command::new(require("prometheus"))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={web}")),
            false,
        );
        let prometheus = Self {
            web,
            proc,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while request(web, "GET", "/-/ready").map(|a| a.status) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {WAIT:?}:\n{}",
                prometheus.proc.stderr.text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        // Its discovery hands the target over after some seconds (5 in 2.42); only then
        // does it scrape.
        let deadline = Instant::now() + WAIT;
        while !prometheus.target_up() {
            assert!(
                Instant::now() < deadline,
                "prometheus never scraped {target}: {}\n{}",
                get(web, "/api/v1/targets"),
                prometheus.proc.stderr.text()
            );
            thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// The value of an instant query that yields one sample, or `None` when it yields none.
    pub fn query(&self, expr: &str) -> Option<f64> {
        let body = get(self.web, &format!("/api/v1/query?query={}", encode(expr)));
        let answer: Value = serde_json::from_str(&body).expect("the query API answers JSON");
        assert_eq!(answer["status"], "success", "{answer}");
        let result = answer["data"]["result"].as_array()?.first()?.clone();
        result["value"][1].as_str()?.parse().ok()
    }

    /// Whether the last scrape of the target succeeded (`up == 1`).
    pub fn target_up(&self) -> bool {
        self.query("up") == Some(1.0)
    }
}
