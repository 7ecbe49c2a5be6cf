//! Docker Hub's pull limit in front of a real registry: a relay on 127.0.0.1 that counts
//! manifest GETs as pulls (HEADs and blobs are free, as on Hub), answers every request
//! with `ratelimit-limit`/`ratelimit-remaining` (`N;w=21600`), and once the pulls are
//! spent answers a manifest GET with Hub's 429 `TOOMANYREQUESTS` without passing it on.
//! Everything else goes to the registry unchanged, bodies streamed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::scripted::{answer, Body};

/// Hub's window for anonymous pulls, as its headers give it.
const WINDOW: &str = "w=21600";

#[derive(Default)]
struct Counts {
    /// Manifest GETs passed on (`/v2/<name>/manifests/<reference>`).
    pulls: Vec<String>,
    refused: usize,
}

pub struct HubLimiter {
    addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
}

impl HubLimiter {
    /// Relays to `registry` (`http://host:port`), allowing `limit` pulls.
    pub async fn start(registry: &str, limit: usize) -> HubLimiter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let registry = registry.trim_end_matches('/').to_string();
        let client = reqwest::Client::new();
        let shared = counts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (registry, client, counts) = (registry.clone(), client.clone(), shared.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (registry, client, counts) =
                            (registry.clone(), client.clone(), counts.clone());
                        async move {
                            Ok::<_, Infallible>(
                                relay(req, &registry, &client, &counts, limit).await,
                            )
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HubLimiter { addr, counts }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Manifest GETs that reached the registry (the pulls spent).
    pub fn pulls(&self) -> usize {
        self.counts.lock().unwrap().pulls.len()
    }

    /// The paths of those GETs, in order.
    pub fn pulled(&self) -> Vec<String> {
        self.counts.lock().unwrap().pulls.clone()
    }

    /// Manifest GETs answered 429 here.
    pub fn refused(&self) -> usize {
        self.counts.lock().unwrap().refused
    }
}

async fn relay(
    req: Request<Incoming>,
    registry: &str,
    client: &reqwest::Client,
    counts: &Mutex<Counts>,
    limit: usize,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let pull = req.method() == hyper::Method::GET && path.contains("/manifests/");
    let remaining = {
        let mut counts = counts.lock().unwrap();
        if pull && counts.pulls.len() >= limit {
            counts.refused += 1;
            None
        } else {
            if pull {
                counts.pulls.push(path.clone());
            }
            Some(limit - counts.pulls.len())
        }
    };
    let limit_header = format!("{limit};{WINDOW}");
    let Some(remaining) = remaining else {
        let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your unauthenticated pull rate limit."}]}"#;
        let headers = [
            ("content-type", "application/json"),
            ("ratelimit-limit", limit_header.as_str()),
            ("ratelimit-remaining", &format!("0;{WINDOW}")),
        ];
        return answer(429, &headers, body);
    };
    let url = format!(
        "{registry}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = client.request(req.method().clone(), &url);
    for name in ["accept", "range", "authorization"] {
        if let Some(value) = req.headers().get(name) {
            forward = forward.header(name, value.clone());
        }
    }
    let upstream = match forward.send().await {
        Ok(r) => r,
        Err(e) => return answer(502, &[], format!("relay: {e}")),
    };
    let mut builder = Response::builder()
        .status(upstream.status().as_u16())
        .header("ratelimit-limit", &limit_header)
        .header("ratelimit-remaining", format!("{remaining};{WINDOW}"));
    for (name, value) in upstream.headers() {
        if name != "transfer-encoding" && name != "connection" {
            builder = builder.header(name, value);
        }
    }
    let stream = upstream
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(std::io::Error::other);
    builder.body(StreamBody::new(stream).boxed()).unwrap()
}
