//! An upstream whose every answer a test writes itself, for hostile behaviour no registry
//! shows on demand: a HEAD that says yes to anything, a manifest naming another upstream's
//! digests, an endless body. Listens on 127.0.0.1; counts requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
type Handler = dyn Fn(&str, &str) -> Response<Body> + Send + Sync;

pub struct Scripted {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<(String, String)>>>,
}

impl Scripted {
    /// Serves `answer(method, path)` for every request (`path` with its query, if any).
    pub async fn start(
        answer: impl Fn(&str, &str) -> Response<Body> + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Handler> = Arc::new(answer);
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), log2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        // The query too: a listing's later pages differ by it alone.
                        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let (method, path) = (req.method().to_string(), path.to_string());
                        log.lock().unwrap().push((method.clone(), path.clone()));
                        let response = answer(&method, &path);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Scripted { addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests with this method had a path ending in `suffix`.
    pub fn count(&self, method: &str, suffix: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(m, p)| m == method && p.ends_with(suffix))
            .count()
    }
}

pub fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

pub fn not_found() -> Response<Body> {
    answer(
        404,
        &[("content-type", "application/json")],
        r#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#,
    )
}

/// A chunked 200 body of 64 KiB pieces that goes on until the client stops reading, or
/// `max` bytes (a bound, so a test can never stream forever), counting what it sent.
pub fn endless(sent: Arc<AtomicU64>, max: u64) -> Response<Body> {
    let piece = Bytes::from(vec![0u8; 64 << 10]);
    let stream = futures_util::stream::unfold(0u64, move |n| {
        let (piece, sent) = (piece.clone(), sent.clone());
        async move {
            if n >= max {
                return None;
            }
            sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
            tokio::task::yield_now().await;
            Some((Ok(Frame::data(piece.clone())), n + piece.len() as u64))
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/octet-stream")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}
