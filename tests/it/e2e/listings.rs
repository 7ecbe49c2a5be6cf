//! `tags/list` against the real registry: fetched once, paged here with `n`/`last` and a
//! `Link` to the next page, and served offline after a restart.

use serde_json::{json, Value};

use crate::support::images;
use crate::support::proxy::Proxy;
use crate::support::registry::Registry;

async fn tags(proxy: &Proxy, path: &str) -> (Option<String>, Value) {
    let response = reqwest::get(proxy.url(path)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    let link = response
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_string());
    (link, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_is_fetched_once_paged_here_and_served_offline() {
    let registry = Registry::start();
    for (i, tag) in ["v3", "v1", "v2"].iter().enumerate() {
        images::push_oci_image(&registry.url(), "team/app", tag, &[1024], 500 + i as u64).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&registry.url(), "", Some(dir.path())).await;
    let all = json!({"name": "team/app", "tags": ["v1", "v2", "v3"]});
    assert_eq!(
        tags(&proxy, "/v2/team/app/tags/list").await,
        (None, all.clone())
    );
    let (link, page) = tags(&proxy, "/v2/team/app/tags/list?n=2").await;
    assert_eq!(page["tags"], json!(["v1", "v2"]));
    let link = link.expect("a Link to the next page");
    assert_eq!(link, "</v2/team/app/tags/list?n=2&last=v2>; rel=\"next\"");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let (link, page) = tags(&proxy, next).await;
    assert_eq!((link, page["tags"].clone()), (None, json!(["v3"])));
    let listed = |r: &Registry| {
        r.access_log()
            .iter()
            .filter(|e| e.method == "GET" && e.path.contains("/tags/list"))
            .count()
    };
    assert_eq!(listed(&registry), 1, "one upstream call served every page");
    proxy.stop().await;

    // Air-gapped after one online call: the same answers from the disk record.
    let proxy = Proxy::start_with(&registry.url(), "offline = true", Some(dir.path())).await;
    assert_eq!(tags(&proxy, "/v2/team/app/tags/list").await, (None, all));
    let (_, page) = tags(&proxy, "/v2/team/app/tags/list?n=1&last=v1").await;
    assert_eq!(page["tags"], json!(["v2"]));
    assert_eq!(listed(&registry), 1);
}
