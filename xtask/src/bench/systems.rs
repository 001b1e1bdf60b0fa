//! The systems under test: direct, sockgate on each datapath, HAProxy and nginx. Each proxy
//! gets a config generated into the bench's temp dir, routes the same 10,000 names to the
//! bench server by SNI, and is stopped (its whole process tree) when the bench ends.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How many names every policy holds.
pub const NAMES: usize = 10_000;

/// The `i`th allowed name.
pub fn name(i: usize) -> String {
    format!("n{:05}.{}", i % NAMES, super::tls::DOMAIN)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No proxy: the client connects to the server.
    Direct,
    /// `sockgate run` with this `datapath`.
    Sockgate(&'static str),
    /// The same with `[admin]`, its `/metrics` scraped every second (`--only rate`).
    Scraped(&'static str),
    Haproxy,
    Nginx,
}

/// Every system, in the order they alternate and are reported.
pub const SYSTEMS: &[(&str, Kind)] = &[
    ("direct", Kind::Direct),
    ("sockgate-sockmap", Kind::Sockgate("sockmap")),
    ("sockgate-splice", Kind::Sockgate("splice")),
    ("sockgate-copy", Kind::Sockgate("copy")),
    ("haproxy", Kind::Haproxy),
    ("nginx", Kind::Nginx),
];

/// Added to [`SYSTEMS`] by `--only rate`: the admin endpoint's cost on the connection path.
pub const SCRAPED: (&str, Kind) = ("sockgate-sockmap-admin", Kind::Scraped("sockmap"));

/// A started system: where clients connect, and the process to measure and stop.
pub struct Running {
    pub name: &'static str,
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Option<Child>,
    /// Where the system's stdout goes: sockgate's decision and close lines.
    stdout: PathBuf,
    /// The system's config and log directory (removed with the bench's temp dir).
    dir: PathBuf,
    /// Scrapes the admin endpoint until dropped ([`Kind::Scraped`] only).
    _scraper: Option<Scraper>,
}

impl Running {
    /// Starts `kind` with its config and logs in `dir` (created), forwarding to `server`.
    pub fn start(
        name: &'static str,
        kind: Kind,
        dir: &Path,
        server: SocketAddr,
        sockgate: &Path,
    ) -> anyhow::Result<Self> {
        if kind == Kind::Direct {
            return Ok(Self {
                name,
                kind,
                addr: server,
                child: None,
                stdout: PathBuf::new(),
                dir: PathBuf::new(),
                _scraper: None,
            });
        }
        let addr = free_port()?;
        std::fs::create_dir_all(dir)?;
        let admin = match kind {
            Kind::Scraped(_) => Some(free_port()?),
            _ => None,
        };
        let mut cmd = match kind {
            Kind::Direct => unreachable!("handled above"),
            Kind::Sockgate(datapath) | Kind::Scraped(datapath) => {
                sockgate_cmd(dir, sockgate, datapath, addr, server, admin)?
            }
            Kind::Haproxy => haproxy_cmd(dir, addr, server)?,
            Kind::Nginx => nginx_cmd(dir, addr, server)?,
        };
        let log = std::fs::File::create(dir.join("stderr.log"))?;
        let stdout = dir.join("stdout.log");
        let child = cmd
            .stdin(Stdio::null())
            // sockgate's two JSON lines per connection, kept to check the datapath.
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let mut running = Self {
            name,
            kind,
            addr,
            child: Some(child),
            stdout,
            dir: dir.to_owned(),
            _scraper: None,
        };
        running.wait_listening(dir)?;
        running._scraper = admin.map(Scraper::start);
        Ok(running)
    }

    fn wait_listening(&mut self, dir: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                bail!("{} exited at start ({status}):\n{log}", self.name);
            }
            if TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("{} never listened on {}", self.name, self.addr)
    }

    /// sockgate only: checks that every relayed connection closed on the configured
    /// datapath, and says how many did. Refused ones are the readiness probes.
    pub fn check_datapath(&self) -> anyhow::Result<Option<String>> {
        let (Kind::Sockgate(datapath) | Kind::Scraped(datapath)) = self.kind else {
            return Ok(None);
        };
        let log = std::fs::read_to_string(&self.stdout)?;
        let (mut relayed, mut refused) = (0u64, 0u64);
        for line in log.lines().filter(|l| l.contains("\"event\":\"close\"")) {
            match line
                .split("\"datapath\":\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            {
                Some(path) if path == datapath => relayed += 1,
                Some(path) => bail!("{}: a connection was relayed on {path}: {line}", self.name),
                None => refused += 1,
            }
        }
        Ok(Some(format!(
            "{}: {relayed} connections relayed, all on {datapath}; {refused} refused",
            self.name
        )))
    }

    /// Resident memory of the process and its children (nginx's workers), in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let Some(child) = &self.child else {
            return Ok(0);
        };
        let root = child.id();
        let mut total = vm_rss(root)?;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if parent(pid) == Some(root) {
                total += vm_rss(pid).unwrap_or(0);
            }
        }
        Ok(total)
    }
}

impl Drop for Running {
    /// SIGTERM (nginx's master then stops its workers; sockgate's grace is 0 in its
    /// config), then SIGKILL after 5 s.
    fn drop(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        // The temp dir goes with the bench: keep the last logs of each system, so a failed
        // run can be explained.
        let kept = crate::exec::workspace_root()
            .join("target/bench/logs")
            .join(self.name);
        if std::fs::create_dir_all(&kept).is_ok() {
            for log in ["stderr.log", "stdout.log"] {
                let _ = std::fs::copy(self.dir.join(log), kept.join(log));
            }
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} ignored SIGTERM; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn vm_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS for pid {pid}"))?;
    Ok(kb * 1024)
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields restart after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A loopback port nothing listens on now.
/// GETs `/metrics` every second, as Prometheus would, until dropped; says so when a
/// scrape did not get a 200.
struct Scraper {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Scraper {
    fn start(admin: SocketAddr) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let mut scrapes = 0;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_secs(1))
            {
                let answer = scrape(admin).unwrap_or_else(|e| format!("{e}"));
                assert!(
                    answer.starts_with("HTTP/1.1 200"),
                    "scraping {admin}: {answer:.200}"
                );
                scrapes += 1;
            }
            scrapes
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(scrapes)) => eprintln!("bench: {scrapes} scrapes of the admin endpoint"),
            Some(Err(_)) => eprintln!("bench: a scrape failed; the admin figure is void"),
            None => {}
        }
    }
}

/// One `GET /metrics`, read to its end.
fn scrape(admin: SocketAddr) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(admin)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn write(dir: &Path, file: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(file);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// An SNI listener, one rule with every name, and every name resolving to the server.
fn sockgate_cmd(
    dir: &Path,
    bin: &Path,
    datapath: &str,
    addr: SocketAddr,
    server: SocketAddr,
    admin: Option<SocketAddr>,
) -> anyhow::Result<Command> {
    let mut toml = format!(
        "datapath = \"{datapath}\"\n\n\
         [[listener]]\nname = \"sni\"\nmode = \"sni\"\naddress = \"{addr}\"\n\
         upstream_port = {}\n\n\
         [policy]\ndefault = \"deny\"\n\n\
         [[policy.rule]]\nname = \"bench\"\naction = \"allow\"\nfqdn = [\n",
        server.port()
    );
    for i in 0..NAMES {
        writeln!(toml, "  \"{}\",", name(i))?;
    }
    toml.push_str("]\n\n[resolver.hosts]\n");
    for i in 0..NAMES {
        writeln!(toml, "\"{}\" = [\"{}\"]", name(i), server.ip())?;
    }
    toml.push_str(
        "\n[limits]\nmax_connections = 40000\nidle_timeout = \"0\"\nshutdown_grace = \"0\"\n",
    );
    if let Some(admin) = admin {
        writeln!(toml, "\n[admin]\naddress = \"{admin}\"")?;
    }
    let config = write(dir, "sockgate.toml", &toml)?;
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("-c").arg(config).env("RUST_LOG", "warn");
    Ok(cmd)
}

/// TCP mode with splice-auto; the names as an SNI ACL file, read after the ClientHello.
/// maxconn and maxpipes keep HAProxy's descriptor need (2 per connection, 2 per pipe)
/// under a 20,000 limit; 200 pipes cover the 32 busy connections of the parallel test.
fn haproxy_cmd(dir: &Path, addr: SocketAddr, server: SocketAddr) -> anyhow::Result<Command> {
    let names = (0..NAMES).map(|i| name(i) + "\n").collect::<String>();
    let names = write(dir, "names.txt", &names)?;
    let config = format!(
        "global\n  nbthread 2\n  maxconn 9500\n  maxpipes 200\n\n\
         defaults\n  mode tcp\n  option splice-auto\n  maxconn 9500\n\
         \x20 timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\n\
         frontend sni\n  bind {addr}\n\
         \x20 tcp-request inspect-delay 5s\n\
         \x20 tcp-request content accept if {{ req.ssl_hello_type 1 }}\n\
         \x20 use_backend server if {{ req.ssl_sni -f {} }}\n\n\
         backend server\n  server s {server}\n",
        names.display()
    );
    let config = write(dir, "haproxy.cfg", &config)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(config);
    Ok(cmd)
}

/// stream with ssl_preread, a map of the names to one upstream, proxy_half_close on.
fn nginx_cmd(dir: &Path, addr: SocketAddr, server: SocketAddr) -> anyhow::Result<Command> {
    let map = (0..NAMES)
        .map(|i| format!("{} server;\n", name(i)))
        .collect::<String>();
    let map = write(dir, "names.map", &map)?;
    let config = format!(
        "daemon off;\nworker_processes 2;\nworker_rlimit_nofile 20000;\n\
         pid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         events {{ worker_connections 20000; }}\n\
         stream {{\n\
         \x20 map_hash_max_size 32768;\n  map_hash_bucket_size 64;\n\
         \x20 map $ssl_preread_server_name $backend {{\n    default \"\";\n    include {map};\n  }}\n\
         \x20 upstream server {{ server {server}; }}\n\
         \x20 server {{\n    listen {addr};\n    ssl_preread on;\n    proxy_pass $backend;\n\
         \x20   proxy_half_close on;\n    proxy_timeout 1h;\n  }}\n}}\n",
        dir = dir.display(),
        map = map.display(),
    );
    let config = write(dir, "nginx.conf", &config)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(config);
    Ok(cmd)
}
