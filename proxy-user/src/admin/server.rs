//! The admin endpoint: HTTP/1.1 on hyper, GET only.
//!
//! It is unauthenticated (as Envoy's admin is), so it binds to loopback unless told
//! otherwise (`[admin] allow_remote`), and bounds what a client can make it hold: a request head of
//! [`MAX_HEAD`] (431 past it), [`HEADER_READ_TIMEOUT`] to send one, and
//! [`MAX_CONNECTIONS`] at once (more are closed at accept), so idle clients can neither
//! grow its memory nor take the descriptors the proxy's listeners need.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{Admin, Readiness, metrics};

/// Admin connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client has to send a request head, from its connect or its previous request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head served; hyper answers 431 past it.
pub const MAX_HEAD: usize = 16 << 10;

/// Serves `admin` on `listener` until the task is dropped. `[admin]`'s validation has
/// refused a non-loopback address without `allow_remote`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD)
        .max_buf_size(2 * MAX_HEAD);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and friends pass; the endpoint stays.
                log::warn!("admin: accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            log::debug!("admin: over {MAX_CONNECTIONS} connections; closing one");
            continue;
        };
        let admin = Arc::clone(&admin);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let answer = respond(&admin, &req);
                async move { Ok::<_, Infallible>(answer) }
            }),
        );
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                log::debug!("admin: {err}");
            }
            drop(slot);
        });
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The answer to one request.
fn respond(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(
        path,
        "/metrics" | "/healthz" | "/readyz" | "/connections" | "/config"
    );
    if !known {
        return answer(StatusCode::NOT_FOUND, TEXT, "not found\n".into());
    }
    if req.method() != Method::GET {
        let mut response = answer(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/metrics" => answer(StatusCode::OK, metrics::CONTENT_TYPE, admin.metrics_text()),
        "/healthz" => answer(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => {
            let readiness = admin.readiness();
            let status = match readiness {
                Readiness::Ready => StatusCode::OK,
                Readiness::Starting | Readiness::Draining => StatusCode::SERVICE_UNAVAILABLE,
            };
            answer(status, TEXT, format!("{}\n", readiness.as_str()))
        }
        "/connections" => json(&admin.connections()),
        _ => json(&admin.config()),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string(value) {
        Ok(text) => answer(StatusCode::OK, "application/json", text + "\n"),
        Err(err) => answer(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{err}\n")),
    }
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use std::net::SocketAddr;

    use super::*;

    /// A server on an ephemeral loopback port.
    async fn start(admin: Arc<Admin>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, admin));
        addr
    }

    /// Sends `request` as is and returns the whole answer (the server closes).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before the whole request is written.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        let request = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        exchange(addr, request.as_bytes()).await
    }

    #[tokio::test]
    async fn routes() {
        let admin = Arc::new(Admin::default());
        let addr = start(Arc::clone(&admin)).await;
        assert!(
            get(addr, "GET", "/healthz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let starting = get(addr, "GET", "/readyz").await;
        assert!(starting.starts_with("HTTP/1.1 503"), "{starting}");
        assert!(starting.ends_with("starting\n"), "{starting}");
        admin.set_readiness(Readiness::Ready);
        assert!(
            get(addr, "GET", "/readyz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        admin.set_readiness(Readiness::Draining);
        assert!(
            get(addr, "GET", "/readyz")
                .await
                .starts_with("HTTP/1.1 503")
        );
        let metrics = get(addr, "GET", "/metrics").await;
        assert!(
            metrics.contains("# TYPE sockgate_bytes_total counter"),
            "{metrics}"
        );
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        let connections = get(addr, "GET", "/connections").await;
        assert!(connections.ends_with("\r\n\r\n[]\n"), "{connections}");
        let config = get(addr, "GET", "/config").await;
        assert!(config.contains(r#""sha256":"#), "{config}");
        assert!(get(addr, "GET", "/nope").await.starts_with("HTTP/1.1 404"));
        let post = get(addr, "POST", "/metrics").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.to_ascii_lowercase().contains("allow: get"), "{post}");
    }

    #[tokio::test]
    async fn a_huge_request_head_is_refused() {
        let addr = start(Arc::new(Admin::default())).await;
        let mut request = b"GET /metrics HTTP/1.1\r\nx-big: ".to_vec();
        request.resize(request.len() + (1 << 20), b'a');
        request.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(addr, &request).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.100}");
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed() {
        let addr = start(Arc::new(Admin::default())).await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Every slot is held by an idle client: the next one is closed unanswered...
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0; 1];
        assert_eq!(extra.read(&mut buf).await.unwrap_or(0), 0);
        // ...and served once a slot is free.
        drop(idle.pop());
        let mut answer = String::new();
        for _ in 0..50 {
            answer = get(addr, "GET", "/healthz").await;
            if !answer.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
