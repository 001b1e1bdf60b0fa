//! `sockgate status [--admin ADDR] [--json] [-c FILE]`: what a running agent is doing, read
//! from its admin endpoint.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, body::Bytes, header::HOST};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{
    admin::{ConfigReport, connections::Row, status},
    config::AdminConfig,
};

/// Where `status` looks without `--admin` or an `[admin]` in `-c FILE`.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";

/// How long the endpoint has to answer each request.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `sockgate status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The admin endpoint; defaults to the `[admin] address` of `-c FILE`, else 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Print the open connections as `GET /connections`'s JSON array.
    #[arg(long)]
    pub json: bool,
    /// The config file whose `[admin] address` to read.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Prints the status screen, or the JSON array; fails with one line when nothing answers.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let addr = address(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let connections = runtime.block_on(get(addr, "/connections"))?;
    if args.json {
        print!("{connections}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Row> =
        serde_json::from_str(&connections).context("GET /connections: not the JSON expected")?;
    let config = runtime.block_on(get(addr, "/config"))?;
    let config: ConfigReport =
        serde_json::from_str(&config).context("GET /config: not the JSON expected")?;
    print!("{}", status::render(&config, &rows));
    Ok(ExitCode::SUCCESS)
}

/// `--admin`, else `-c FILE`'s `[admin] address`, else [`DEFAULT_ADMIN`].
fn address(args: &Args) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = args.admin {
        return Ok(addr);
    }
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        if let Some(addr) = admin_address(&text).with_context(|| path.display().to_string())? {
            return Ok(addr);
        }
    }
    Ok(DEFAULT_ADMIN.parse()?)
}

/// The `[admin] address` of a config's text, when it has one. Only `[admin]` is read, so
/// the status of an agent still shows while its file has an error elsewhere.
fn admin_address(text: &str) -> anyhow::Result<Option<SocketAddr>> {
    /// The config's `[admin]`, the rest ignored.
    #[derive(serde::Deserialize)]
    struct Only {
        admin: Option<AdminConfig>,
    }
    let only: Only = toml::from_str(text)?;
    Ok(only.admin.map(|a| a.address))
}

/// One GET to the admin endpoint; its body when the answer is 200.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let nothing = |err: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "nothing answers at {addr} ({err}); is sockgate running with [admin] address = \
             \"{addr}\"?"
        )
    };
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| nothing(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| nothing(&e))?;
        tokio::spawn(conn);
        let request = Request::get(path)
            .header(HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| nothing(&e))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            anyhow::bail!("GET {path} at {addr}: {status}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| nothing(&"no answer in 5 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_flag_then_the_config_then_the_default() {
        let text = "[admin]\naddress = \"127.0.0.1:9191\"\n";
        assert_eq!(
            admin_address(text).unwrap(),
            Some("127.0.0.1:9191".parse().unwrap())
        );
        assert_eq!(admin_address("[limits]\n").unwrap(), None);
        let err = admin_address("[admin]\naddress = \"localhost\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid socket address"),
            "{err:#}"
        );
        let args = Args {
            admin: None,
            json: false,
            config: None,
        };
        assert_eq!(address(&args).unwrap().to_string(), DEFAULT_ADMIN);
    }

    #[test]
    fn nothing_answering_is_one_line() {
        // A port just freed: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime.block_on(get(addr, "/connections")).unwrap_err();
        let line = format!("{err:#}");
        assert!(
            line.starts_with(&format!("nothing answers at {addr}")),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
}
