//! A small token service for `docker-registry` with `auth: token`, in process on 127.0.0.1.
//!
//! `GET /token?service=..&scope=..` with Basic credentials (the only user it knows) answers
//! `{"token": <JWT>, "expires_in": 300}`; without them or with wrong ones, 401. The JWT is
//! ES256, signed with a key generated per issuer, and names its certificate in the `x5c`
//! header: distribution 2.8 verifies an `x5c` chain against its `rootcertbundle`, which is
//! that same self-signed certificate ([`TokenIssuer::write_cert`]). Every request is counted
//! by scope, so a test can check that regcache caches a token per scope.
//!
//! [`TokenIssuer::registry_yaml`] is the `auth:` section for `Registry::start_with`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;
use tokio::net::TcpListener;

pub const SERVICE: &str = "regcache-e2e-registry";
pub const ISSUER: &str = "regcache-e2e-issuer";
/// Lifetime of issued tokens, in seconds.
pub const EXPIRES_IN: u64 = 300;

struct Inner {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
    /// `Basic base64(user:password)` of the one user.
    basic: String,
    /// Requests per scope ("" for none), and those refused.
    by_scope: Mutex<HashMap<String, usize>>,
    refused: Mutex<usize>,
}

#[derive(Clone)]
pub struct TokenIssuer {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl TokenIssuer {
    /// Starts an issuer that gives tokens to `user`:`password` only.
    pub async fn start(user: &str, password: &str) -> TokenIssuer {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["token-issuer.test".to_string()]).unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = TokenIssuer {
            addr: listener.local_addr().unwrap(),
            inner: Arc::new(Inner {
                key,
                cert_der: cert.der().to_vec(),
                cert_pem: cert.pem(),
                basic,
                by_scope: Mutex::default(),
                refused: Mutex::default(),
            }),
        };
        let server = issuer.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let issuer = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let issuer = issuer.clone();
                        async move { Ok::<_, Infallible>(issuer.answer(req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        issuer
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Writes the signing certificate (PEM) to `path`, for `rootcertbundle`.
    pub fn write_cert(&self, path: &Path) {
        std::fs::write(path, &self.inner.cert_pem).unwrap();
    }

    /// The registry's `auth:` section, trusting the certificate written to `cert_path`.
    pub fn registry_yaml(&self, cert_path: &Path) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            cert_path.display()
        )
    }

    /// Token requests that named `scope` (granted or not).
    pub fn requests_for(&self, scope: &str) -> usize {
        let by_scope = self.inner.by_scope.lock().unwrap();
        by_scope.get(scope).copied().unwrap_or(0)
    }

    /// Token requests refused for lack of (right) credentials.
    pub fn refused(&self) -> usize {
        *self.inner.refused.lock().unwrap()
    }

    /// A token for `scope` (e.g. `repository:a/b:pull,push`), as the test's own client
    /// needs to push; not counted.
    pub fn mint(&self, scope: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<_> = scope
            .split(' ')
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let header = json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.inner.cert_der)],
        });
        let claims = json!({
            "iss": ISSUER,
            "sub": "regcache-e2e",
            "aud": SERVICE,
            "exp": now + EXPIRES_IN,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", rand_suffix()),
            "access": access,
        });
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let signing_input = format!("{}.{}", b64(&header), b64(&claims));
        let signature = self
            .inner
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
        format!("{signing_input}.{signature}")
    }

    fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let query: HashMap<String, String> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let scope = query.get("scope").cloned().unwrap_or_default();
        *self
            .inner
            .by_scope
            .lock()
            .unwrap()
            .entry(scope.clone())
            .or_default() += 1;
        let sent = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let service_ok = query.get("service").map(String::as_str) == Some(SERVICE);
        if sent != Some(self.inner.basic.as_str()) || !service_ok {
            *self.inner.refused.lock().unwrap() += 1;
            return Response::builder()
                .status(401)
                .header("www-authenticate", "Basic realm=\"token-issuer\"")
                .body(Full::new(Bytes::from_static(
                    b"{\"details\":\"bad credentials\"}",
                )))
                .unwrap();
        }
        // The issuer grants what was asked; the test's user may pull anything.
        let body = json!({ "token": self.mint(&scope), "expires_in": EXPIRES_IN });
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }
}

/// Distinct enough jti values without a random-number dependency.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
