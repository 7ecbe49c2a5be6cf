//! An in-process fake of the Amazon ECR API, enough for `GetAuthorizationToken`: the
//! AWS JSON 1.1 protocol, `POST /` with `X-Amz-Target:
//! AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken`, answered with
//! `{"authorizationData": [{"authorizationToken": base64("AWS:<password>"), "expiresAt":
//! <epoch seconds>, "proxyEndpoint": ".."}]}`. Signatures are not checked. It counts the
//! token requests, and can be told the password, the token lifetime and a delay.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";

struct State {
    password: String,
    lifetime: Duration,
    delay: Duration,
    token_requests: usize,
    /// `X-Amz-Target` values that were not GetAuthorizationToken.
    unknown: Vec<String>,
}

#[derive(Clone)]
pub struct FakeEcr {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeEcr {
    /// Answers with `AWS:<password>`, valid for 12 hours, at once.
    pub async fn start(password: &str) -> FakeEcr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeEcr {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State {
                password: password.into(),
                lifetime: Duration::from_secs(12 * 3600),
                delay: Duration::ZERO,
                token_requests: 0,
                unknown: Vec::new(),
            })),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let fake = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let fake = fake.clone();
                        async move { Ok::<_, Infallible>(fake.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    /// `http://127.0.0.1:PORT`, for `ecr = { endpoint_url = .. }`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_password(&self, password: &str) {
        self.state.lock().unwrap().password = password.into();
    }

    /// Tokens issued from now on expire this long after they are issued.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().lifetime = lifetime;
    }

    /// Waits this long before answering (so concurrent requests overlap a fetch).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    pub fn unknown_targets(&self) -> Vec<String> {
        self.state.lock().unwrap().unknown.clone()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let _ = req.into_body().collect().await;
        if target != TARGET {
            self.state.lock().unwrap().unknown.push(target);
            return json(400, r#"{"__type":"UnknownOperationException"}"#.into());
        }
        let (password, lifetime, delay) = {
            let mut state = self.state.lock().unwrap();
            state.token_requests += 1;
            (state.password.clone(), state.lifetime, state.delay)
        };
        tokio::time::sleep(delay).await;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let expires_at = (now + lifetime).as_secs();
        let body = format!(
            r#"{{"authorizationData":[{{"authorizationToken":"{token}","expiresAt":{expires_at},"proxyEndpoint":"https://1.dkr.ecr.us-east-1.amazonaws.com"}}]}}"#
        );
        json(200, body)
    }
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-requestid", "00000000-0000-0000-0000-000000000000")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
