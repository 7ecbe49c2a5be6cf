//! Parents: other regcaches (a regional mirror) that one upstream's requests go to first,
//! in order, before the registry itself. A node-local mirror then fills from the regional
//! one, which fetches each blob once for every node and streams its fill to all of them.
//!
//! A parent is asked with `ns=<the registry's host>`, the name every regcache routes to its
//! upstream for that registry, however the client named it here. Its 2xx or 404 is the
//! answer; anything else (refused connection, timeout, 5xx, 401/403, 429) leaves it out for
//! a while and the next one, then the registry, is asked. A parent gets none of the
//! registry's credentials: they are the registry's, and the parent has its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, ACCEPT, RANGE};
use http::{Method, StatusCode};
use prometheus::IntCounterVec;
use reqwest::Response;
use url::Url;

/// A parent is on the same network: one that does not connect at once is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a parent that failed is left out, so a dead parent costs one timeout, not one
/// per request.
const DOWN_FOR: Duration = Duration::from_secs(10);

pub struct Parents {
    list: Vec<Parent>,
    /// The registry's `host[:port]`, passed as `ns=`.
    ns: String,
    upstream: String,
    http: reqwest::Client,
    /// `regcache_parent_requests_total{upstream,result}`.
    counter: IntCounterVec,
}

struct Parent {
    url: Url,
    down_until: Mutex<Option<Instant>>,
}

/// What the parents said.
pub enum Asked {
    /// A 2xx or a 404: the answer.
    Answer(Response),
    /// No parent answered; ask the registry.
    NoParent,
}

impl Parents {
    pub fn new(
        urls: &[Url],
        ns: String,
        upstream: &str,
        read_timeout: Duration,
        counter: IntCounterVec,
    ) -> reqwest::Result<Parents> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            .user_agent(concat!("regcache/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .no_proxy()
            .build()?;
        Ok(Parents {
            list: urls
                .iter()
                .map(|url| Parent {
                    url: url.clone(),
                    down_until: Mutex::new(None),
                })
                .collect(),
            ns,
            upstream: upstream.to_string(),
            http,
            counter,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Sends `method` for `path` (`<name>/<resource>`) to each parent that is not down, in
    /// order, until one answers.
    pub async fn send(
        &self,
        method: &Method,
        path: &str,
        accept: Option<&str>,
        range: Option<&HeaderValue>,
    ) -> Asked {
        for parent in &self.list {
            if parent.is_down() {
                self.count("skipped");
                continue;
            }
            let mut url = parent
                .url
                .join(&format!("v2/{path}"))
                .expect("a valid path");
            url.query_pairs_mut().append_pair("ns", &self.ns);
            let mut request = self.http.request(method.clone(), url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(range) = range {
                request = request.header(RANGE, range.clone());
            }
            let why = match request.send().await {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                    self.count(if r.status().is_success() {
                        "ok"
                    } else {
                        "not_found"
                    });
                    return Asked::Answer(r);
                }
                // Its pull budget is spent: the registry behind it would refuse this node
                // too (one NAT address), so that is the answer, not a failure to skip.
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    self.count("throttled");
                    return Asked::Answer(r);
                }
                Ok(r) => r.status().to_string(),
                Err(e) => e.to_string(),
            };
            self.count("failed");
            *parent.down_until.lock().expect("parent lock") = Some(Instant::now() + DOWN_FOR);
            tracing::warn!(upstream = %self.upstream, parent = %parent.url, %why, "parent failed; asking the next");
        }
        Asked::NoParent
    }

    fn count(&self, result: &str) {
        self.counter
            .with_label_values(&[self.upstream.as_str(), result])
            .inc();
    }
}

impl Parent {
    fn is_down(&self) -> bool {
        let down = self.down_until.lock().expect("parent lock");
        down.is_some_and(|until| Instant::now() < until)
    }
}
