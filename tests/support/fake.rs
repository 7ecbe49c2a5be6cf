//! An in-process fake upstream registry, for what a real registry cannot do on demand:
//! corrupt bytes, bodies cut mid-way (and resumed by `Range`), 500s, 429s with
//! `Retry-After`, slow or held bodies, auth challenges (with any realm), rate-limit
//! headers, redirects anywhere.
//! It counts every request so tests can assert exactly what went upstream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What the fake does wrong when serving one object.
#[derive(Clone, Debug, Default)]
pub enum Fault {
    #[default]
    None,
    /// Flip a byte in the middle of the body.
    Corrupt,
    /// Send half the body, then close the connection. A `Range: bytes=N-` request for the
    /// rest is served whole (unless ranges are ignored), so a resume succeeds.
    Cut,
    /// Answer with this status and an OCI error body.
    Status(u16),
    /// Send the body in 64 KiB pieces with this pause between them.
    Slow(Duration),
    /// Send half the body, then wait for `release()` before the rest.
    Held,
    /// Omit Content-Length (chunked body).
    NoLength,
}

#[derive(Clone)]
struct Object {
    bytes: Bytes,
    media_type: String,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Object>,
    manifests: HashMap<String, Object>,
    /// (repo, tag) -> digest
    tags: HashMap<(String, String), String>,
    faults: HashMap<String, Fault>,
    log: Vec<(String, String)>,
    /// Require this Bearer token (issued by /token) when set.
    bearer: Option<String>,
    tokens_issued: usize,
    /// The `Authorization` each `/token` request carried.
    token_authorizations: Vec<Option<String>>,
    /// The realm of the Bearer challenge, when not this fake's own `/token`.
    realm: Option<String>,
    /// path -> `Location` answered with a 307 (after the auth check).
    redirects: HashMap<String, String>,
    /// The `Authorization` sent with each `/v2/` request, by path.
    authorizations: Vec<(String, Option<String>)>,
    /// Require Basic credentials when set.
    basic: Option<String>,
    /// Digest header to send on manifests instead of the real one.
    lie_about_digest: bool,
    /// Headers added to every `/v2/` answer (e.g. Docker Hub's rate-limit headers).
    extra_headers: Vec<(String, String)>,
    /// Answer every `/v2/` request with this status (429, 503, ...).
    fail_all: Option<u16>,
    /// Answer the next `n` `/v2/` requests with this status, then serve normally.
    fail_next: Option<(usize, u16)>,
    /// `Retry-After` sent with injected failures.
    retry_after: Option<String>,
    /// Serve whole bodies, ignoring `Range` (by default `bytes=N-` gets a 206).
    ignore_ranges: bool,
    /// digest -> the only repositories that have it (by default every repository does).
    only_in: HashMap<String, Vec<String>>,
}

#[derive(Clone)]
pub struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    gate: Arc<Semaphore>,
    tls: bool,
    /// The self-signed certificate of a TLS fake (PEM), to trust it with `ca_file`.
    cert_pem: Option<String>,
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        FakeRegistry::serve(None).await
    }

    /// The same fake over TLS with a self-signed certificate for 127.0.0.1 that no
    /// client trusts unless given [`FakeRegistry::cert_pem`]: [`FakeRegistry::url`] is
    /// `https://`.
    pub async fn start_untrusted_tls() -> FakeRegistry {
        use tokio_rustls::rustls::crypto::ring;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let pem = made.cert.pem();
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        FakeRegistry::serve(Some((acceptor, pem))).await
    }

    async fn serve(tls: Option<(tokio_rustls::TlsAcceptor, String)>) -> FakeRegistry {
        let (tls, cert_pem) = tls.unzip();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeRegistry {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            tls: tls.is_some(),
            cert_pem,
        };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let fake = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let fake = fake.clone();
                        async move { Ok::<_, Infallible>(fake.answer(req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        fake
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `https://` to this plain-HTTP fake: a TLS client meets a server that does not speak it.
    pub fn wrong_scheme_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn add_blob(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = sha256(&bytes);
        let object = Object {
            bytes,
            media_type: "application/octet-stream".into(),
        };
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), object);
        digest
    }

    pub fn add_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> String {
        let bytes = bytes.into();
        let digest = sha256(&bytes);
        let mut state = self.state.lock().unwrap();
        let object = Object {
            bytes,
            media_type: media_type.into(),
        };
        state.manifests.insert(digest.clone(), object);
        state.tags.insert((repo.into(), tag.into()), digest.clone());
        digest
    }

    /// From now on only `repos` have `digest` (blob or manifest); others get a 404.
    pub fn only_in(&self, digest: &str, repos: &[&str]) {
        let repos = repos.iter().map(|r| r.to_string()).collect();
        self.state
            .lock()
            .unwrap()
            .only_in
            .insert(digest.into(), repos);
    }

    pub fn set_fault(&self, digest: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(digest.into(), fault);
    }

    /// Lets held bodies (`Fault::Held`) finish.
    pub fn release(&self) {
        self.gate.add_permits(1_000);
    }

    pub fn require_bearer(&self, token: &str) {
        self.state.lock().unwrap().bearer = Some(token.into());
    }

    /// The certificate a TLS fake serves (PEM); `None` for plain HTTP.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Challenges with this realm instead of the fake's own `http://<addr>/token`.
    pub fn set_realm(&self, realm: &str) {
        self.state.lock().unwrap().realm = Some(realm.into());
    }

    /// Answers `GET path` (e.g. `/v2/a/tags/list`) with `307 Location: location`.
    pub fn redirect(&self, path: &str, location: &str) {
        let mut state = self.state.lock().unwrap();
        state.redirects.insert(path.into(), location.into());
    }

    /// The `Authorization` each `/token` request carried, in order.
    pub fn token_authorizations(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().token_authorizations.clone()
    }

    /// The `Authorization` of each `/v2/` request whose path ends in `suffix`.
    pub fn authorizations(&self, suffix: &str) -> Vec<Option<String>> {
        let state = self.state.lock().unwrap();
        state
            .authorizations
            .iter()
            .filter(|(p, _)| p.ends_with(suffix))
            .map(|(_, a)| a.clone())
            .collect()
    }

    pub fn require_basic(&self, user: &str, password: &str) {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.state.lock().unwrap().basic = Some(format!("Basic {encoded}"));
    }

    /// Adds `name: value` to every `/v2/` answer from now on.
    pub fn add_header(&self, name: &str, value: &str) {
        let mut state = self.state.lock().unwrap();
        state.extra_headers.push((name.into(), value.into()));
    }

    /// Answers every `/v2/` request with `status` (e.g. 429) until called with `None`.
    pub fn fail_all(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail_all = status;
    }

    /// Answers the next `n` `/v2/` requests with `status`, then serves normally.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state.lock().unwrap().fail_next = Some((n, status));
    }

    /// Ignores `Range` requests from now on (serves whole bodies, no `Accept-Ranges`).
    pub fn ignore_ranges(&self) {
        self.state.lock().unwrap().ignore_ranges = true;
    }

    /// Sends `Retry-After: value` with injected failures.
    pub fn retry_after(&self, value: &str) {
        self.state.lock().unwrap().retry_after = Some(value.into());
    }

    pub fn lie_about_digest(&self) {
        self.state.lock().unwrap().lie_about_digest = true;
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.lock().unwrap().tokens_issued
    }

    /// How many requests with this method had a path ending in `suffix`.
    pub fn count(&self, method: &str, suffix: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .log
            .iter()
            .filter(|(m, p)| m == method && p.ends_with(suffix))
            .count()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let v2 = req.uri().path().starts_with("/v2/");
        let mut response = self.answer_inner(req).await;
        if v2 {
            let extra = self.state.lock().unwrap().extra_headers.clone();
            for (name, value) in extra {
                let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
                response.headers_mut().append(name, value.parse().unwrap());
            }
        }
        response
    }

    async fn answer_inner(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        {
            let mut state = self.state.lock().unwrap();
            state.log.push((method.clone(), path.clone()));
            if path == "/token" {
                state.token_authorizations.push(authorization);
            } else {
                state.authorizations.push((path.clone(), authorization));
            }
        }
        if path == "/token" {
            return self.issue_token();
        }
        if let Some(denied) = self.check_auth(&req) {
            return denied;
        }
        let redirect = self.state.lock().unwrap().redirects.get(&path).cloned();
        if let Some(location) = redirect {
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", location)
                .body(empty())
                .unwrap();
        }
        // The base probe (regcache's startup check) is not what a test fails on purpose.
        if path != "/v2/" {
            if let Some(failure) = self.injected_failure() {
                return failure;
            }
        }
        let head = method == "HEAD";
        let range_from = req
            .headers()
            .get("range")
            .and_then(|v| {
                v.to_str()
                    .ok()?
                    .strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse()
                    .ok()
            })
            .filter(|_| !self.state.lock().unwrap().ignore_ranges);
        let parts: Vec<&str> = path.trim_start_matches("/v2/").rsplitn(3, '/').collect();
        let (object, fault) = {
            let state = self.state.lock().unwrap();
            let found = match parts.as_slice() {
                [reference, "manifests", repo] => {
                    let digest = match reference.starts_with("sha256:") {
                        true => Some(reference.to_string()),
                        false => state
                            .tags
                            .get(&(repo.to_string(), reference.to_string()))
                            .cloned(),
                    };
                    digest.and_then(|d| state.manifests.get(&d).map(|o| (d, o.clone())))
                }
                [digest, "blobs", _] => state
                    .blobs
                    .get(*digest)
                    .map(|o| (digest.to_string(), o.clone())),
                _ => None,
            };
            let elsewhere = |digest: &str| {
                let repo = parts.get(2).copied().unwrap_or_default();
                state
                    .only_in
                    .get(digest)
                    .is_some_and(|repos| !repos.iter().any(|r| r == repo))
            };
            let found = found.filter(|(digest, _)| !elsewhere(digest));
            match found {
                Some((digest, object)) => {
                    let fault = state.faults.get(&digest).cloned().unwrap_or_default();
                    let shown = if state.lie_about_digest {
                        sha256(b"a lie")
                    } else {
                        digest
                    };
                    (Some((shown, object)), fault)
                }
                None => (None, Fault::None),
            }
        };
        let Some((digest, object)) = object else {
            let code = match parts.get(1) {
                Some(&"blobs") => "BLOB_UNKNOWN",
                Some(&"manifests") => "MANIFEST_UNKNOWN",
                _ => "NAME_UNKNOWN",
            };
            return error(StatusCode::NOT_FOUND, code, "not here");
        };
        if let Fault::Status(code) = fault {
            return error(
                StatusCode::from_u16(code).unwrap(),
                "UNKNOWN",
                "injected failure",
            );
        }
        let len = object.bytes.len();
        let mut builder = Response::builder()
            .header("content-type", object.media_type.as_str())
            .header("docker-content-digest", digest);
        if let Some(from) =
            range_from.filter(|&f: &usize| f < len && parts.get(1) == Some(&"blobs"))
        {
            // The rest of the blob, whatever the fault (a resumed download succeeds).
            return builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header("content-range", format!("bytes {from}-{}/{len}", len - 1))
                .header("content-length", len - from)
                .body(
                    Full::new(object.bytes.slice(from..))
                        .map_err(|never| match never {})
                        .boxed(),
                )
                .unwrap();
        }
        if !self.state.lock().unwrap().ignore_ranges {
            builder = builder.header("accept-ranges", "bytes");
        }
        if !matches!(fault, Fault::NoLength) {
            builder = builder.header("content-length", len);
        }
        if head {
            return builder.body(empty()).unwrap();
        }
        builder.body(self.body(object.bytes, fault)).unwrap()
    }

    fn body(&self, bytes: Bytes, fault: Fault) -> Body {
        let half = bytes.len() / 2;
        match fault {
            Fault::None | Fault::Status(_) | Fault::NoLength => {
                Full::new(bytes).map_err(|never| match never {}).boxed()
            }
            Fault::Corrupt => {
                let mut data = bytes.to_vec();
                data[half] ^= 0xff;
                Full::new(Bytes::from(data))
                    .map_err(|never| match never {})
                    .boxed()
            }
            Fault::Cut => {
                let chunks = vec![
                    Ok(Frame::data(bytes.slice(..half))),
                    Err(std::io::Error::other("cut")),
                ];
                StreamBody::new(futures_util::stream::iter(chunks)).boxed()
            }
            Fault::Slow(pause) => {
                let pieces: Vec<Bytes> =
                    bytes.chunks(64 << 10).map(|c| bytes.slice_ref(c)).collect();
                let stream =
                    futures_util::stream::unfold(pieces.into_iter(), move |mut it| async move {
                        let piece = it.next()?;
                        tokio::time::sleep(pause).await;
                        Some((Ok(Frame::data(piece)), it))
                    });
                StreamBody::new(stream).boxed()
            }
            Fault::Held => {
                let gate = self.gate.clone();
                let (first, rest) = (bytes.slice(..half), bytes.slice(half..));
                let stream = futures_util::stream::unfold(0, move |step| {
                    let (gate, first, rest) = (gate.clone(), first.clone(), rest.clone());
                    async move {
                        match step {
                            0 => Some((Ok(Frame::data(first)), 1)),
                            1 => {
                                gate.acquire().await.unwrap().forget();
                                Some((Ok(Frame::data(rest)), 2))
                            }
                            _ => None,
                        }
                    }
                });
                StreamBody::new(stream).boxed()
            }
        }
    }

    fn injected_failure(&self) -> Option<Response<Body>> {
        let mut state = self.state.lock().unwrap();
        let status = match (state.fail_all, &mut state.fail_next) {
            (Some(status), _) => status,
            (None, Some((n, status))) if *n > 0 => {
                *n -= 1;
                *status
            }
            _ => return None,
        };
        let status = StatusCode::from_u16(status).unwrap();
        let mut response = error(status, "TOOMANYREQUESTS", "injected failure");
        if let Some(after) = &state.retry_after {
            response
                .headers_mut()
                .insert("retry-after", after.parse().unwrap());
        }
        Some(response)
    }

    fn check_auth(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        let state = self.state.lock().unwrap();
        let sent = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if let Some(token) = &state.bearer {
            if sent != Some(&format!("Bearer {token}")) {
                let own = format!("http://{}/token", self.addr);
                let realm = state.realm.as_deref().unwrap_or(&own);
                let challenge = format!(
                    "Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:x:pull\""
                );
                return Some(unauthorized(&challenge));
            }
        }
        if let Some(basic) = &state.basic {
            if sent != Some(basic.as_str()) {
                return Some(unauthorized("Basic realm=\"fake\""));
            }
        }
        None
    }

    fn issue_token(&self) -> Response<Body> {
        let mut state = self.state.lock().unwrap();
        state.tokens_issued += 1;
        let token = state.bearer.clone().unwrap_or_default();
        let body = format!("{{\"token\":\"{token}\",\"expires_in\":300}}");
        Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
    }
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!("{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"{message}\"}}]}}");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

fn unauthorized(challenge: &str) -> Response<Body> {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    response
        .headers_mut()
        .insert("www-authenticate", challenge.parse().unwrap());
    response
}

/// An upstream that accepts connections and never says a word: every connection is
/// held open, silent, until the value is dropped.
pub struct Silent {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Silent { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}
