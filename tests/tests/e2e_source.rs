//! `[source] url`: the config polled from a local HTTPS server (python3's http.server in
//! ssl, with ETags, certified by a test CA): 304s do not reload, a changed body does, a 500
//! or an invalid body keeps the last good config, and a restart with the URL down starts
//! from the cache. Runs in its own network namespace.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use sockgate_tests::{
    agent::{Agent, Proc, TempDir, WAIT, run},
    netns::NetNs,
    programs::{banner_server, connect_tunnel, require},
};

const PROXY: &str = "127.0.0.1:3128";
const SERVER: &str = "127.0.0.1:8443";

/// Serves `ROOT/body` with an ETag (304 on a match) unless `ROOT/status` says otherwise,
/// and logs each request's If-None-Match to `ROOT/requests`.
const SERVER_PY: &str = r#"
import hashlib, http.server, os, ssl, sys
root, cert, key = sys.argv[1:4]
def read(name, default=None):
    path = os.path.join(root, name)
    return open(path, 'rb').read() if os.path.exists(path) else default
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        asked = self.headers.get('If-None-Match')
        with open(os.path.join(root, 'requests'), 'a') as log:
            log.write((asked or '-') + '\n')
        status = int(read('status', b'200'))
        body = read('body')
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if status == 200 and asked == etag:
            status, body = 304, b''
        if status != 200:
            body = b''
        self.send_response(status)
        self.send_header('ETag', etag)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(('127.0.0.1', 8443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// A test CA and a leaf for 127.0.0.1 it signed: (the CA's PEM, the leaf's, its key).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = require("openssl");
    let file = |name: &str| dir.join(name);
    let steps: [Vec<&str>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sockgate test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        vec![
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    ];
    fs::write(
        file("leaf.ext"),
        "basicConstraints = CA:FALSE\nsubjectAltName = IP:127.0.0.1\n",
    )
    .unwrap();
    for args in steps {
        let (status, _, err) = run(
            "openssl",
            Command::new(&openssl).current_dir(dir).args(&args),
            WAIT,
        );
        assert!(status.success(), "openssl {args:?}: {err}");
    }
    (file("ca.pem"), file("leaf.pem"), file("leaf.key"))
}

/// The HTTPS server, serving from `root`, once it accepts.
fn https_server(root: &Path, cert: &Path, key: &Path) -> Proc {
    fs::write(root.join("server.py"), SERVER_PY).unwrap();
    let server = Proc::spawn(
        "https server",
        Command::new(require("python3"))
            .arg(root.join("server.py"))
            .arg(root)
            .arg(cert)
            .arg(key),
        false,
    );
    let start = Instant::now();
    while TcpStream::connect(SERVER).is_err() {
        assert!(start.elapsed() < WAIT, "the HTTPS server did not start");
        thread::sleep(Duration::from_millis(50));
    }
    server
}

/// The served config: a connect listener, `action` for allowed.test.
fn config(action: &str) -> String {
    format!(
        r#"datapath = "sockmap"

[[listener]]
name = "proxy"
mode = "connect"
address = "{PROXY}"

[[policy.rule]]
name = "the-rule"
action = "{action}"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"] }}

[limits]
client_first_timeout = "200ms"
"#
    )
}

fn status() -> String {
    let proxy: SocketAddr = PROXY.parse().unwrap();
    connect_tunnel(proxy, "allowed.test:2525").1
}

fn until_status(want: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let got = status();
        if got.starts_with(want) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "still {got:?} after {limit:?}, want {want:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn url_lines(agent: &Agent) -> Vec<String> {
    agent
        .stderr()
        .lines()
        .filter(|l| l.contains("(url)"))
        .map(str::to_owned)
        .collect()
}

/// Waits until the agent has logged `n` reload lines from the URL.
fn until_url_lines(agent: &Agent, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines = url_lines(agent);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < WAIT,
            "{lines:?}: want {n}\n{}",
            agent.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_url_source_polls_reloads_keeps_the_last_good_and_starts_from_its_cache() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let dir = TempDir::new("source");
    let (ca, cert, key) = pki(dir.path());
    let cache = dir.join("cache.toml");
    let bootstrap = dir.join("sockgate.toml");
    fs::write(
        &bootstrap,
        format!(
            "[source]\nurl = \"https://{SERVER}/sockgate.toml\"\ninterval = \"1s\"\n\
             ca_file = \"{}\"\ncache = \"{}\"\n",
            ca.display(),
            cache.display()
        ),
    )
    .unwrap();
    fs::write(dir.join("body"), config("allow")).unwrap();
    let server = https_server(dir.path(), &cert, &key);
    let agent = Agent::start_at(TempDir::new("source-agent"), bootstrap.clone(), &[]);
    assert!(status().starts_with("HTTP/1.1 200"), "{}", agent.stderr());
    assert_eq!(
        fs::read_to_string(&cache).unwrap(),
        config("allow"),
        "cached"
    );

    // Polls with the ETag get 304s, which reload nothing.
    let start = Instant::now();
    while fs::read_to_string(dir.join("requests"))
        .unwrap()
        .lines()
        .count()
        < 3
    {
        assert!(start.elapsed() < WAIT, "no polls");
        thread::sleep(Duration::from_millis(100));
    }
    let requests = fs::read_to_string(dir.join("requests")).unwrap();
    let asked: Vec<&str> = requests.lines().collect();
    assert_eq!(asked[0], "-", "the first fetch is unconditional");
    assert!(asked[1..].iter().all(|e| e.starts_with('"')), "{asked:?}");
    assert_eq!(url_lines(&agent), Vec::<String>::new(), "a 304 reloaded");

    // A changed body reloads.
    fs::write(dir.join("body"), config("deny")).unwrap();
    until_status("HTTP/1.1 403", Duration::from_secs(5));
    let lines = until_url_lines(&agent, 1);
    assert!(lines[0].contains("] reloaded https://"), "{lines:?}");
    assert_eq!(fs::read_to_string(&cache).unwrap(), config("deny"));

    // A 500, then an invalid body: each one line, and the last good config stays.
    fs::write(dir.join("status"), "500").unwrap();
    let lines = until_url_lines(&agent, 2);
    assert!(
        lines[1].contains("reload refused (url)") && lines[1].contains("HTTP 500"),
        "{lines:?}"
    );
    assert!(
        status().starts_with("HTTP/1.1 403"),
        "the last good config stays"
    );
    // Every failed poll has its line; the next body is the invalid one.
    fs::write(dir.join("body"), "this is [not toml\n").unwrap();
    fs::remove_file(dir.join("status")).unwrap();
    let start = Instant::now();
    let invalid = loop {
        let lines = url_lines(&agent);
        if let Some(line) = lines
            .iter()
            .find(|l| !l.contains("HTTP 500") && l.contains("refused"))
        {
            break line.clone();
        }
        assert!(start.elapsed() < WAIT, "{lines:?}");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(invalid.contains("reload refused (url)"), "{invalid}");
    assert!(invalid.contains(":1:"), "names the position: {invalid}");
    assert!(
        status().starts_with("HTTP/1.1 403"),
        "the last good config stays"
    );
    // The invalid body is refused once, not at every poll.
    let seen = url_lines(&agent).len();
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(url_lines(&agent).len(), seen, "{:?}", url_lines(&agent));
    assert_eq!(
        fs::read_to_string(&cache).unwrap(),
        config("deny"),
        "only good text is cached"
    );

    // A restart with the URL down starts from the cache.
    drop(agent);
    drop(server);
    let agent = Agent::start_at(TempDir::new("source-agent"), bootstrap, &[]);
    assert!(
        agent.stderr().contains("starting from the cache"),
        "{}",
        agent.stderr()
    );
    assert!(status().starts_with("HTTP/1.1 403"), "{}", agent.stderr());
}
