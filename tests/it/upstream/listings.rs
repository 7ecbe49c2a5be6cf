//! `referrers` cached per repository: every page upstream links to is fetched once, the
//! `artifactType` filter is applied here (and said so), and the answer is served stale
//! when upstream fails and offline after a restart, so cosign and notation work air-gapped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::fake::sha256;
use crate::support::proxy::Proxy;
use crate::support::scripted::{answer, Scripted};

const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn descriptor(seed: &str, artifact_type: &str) -> String {
    format!(
        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":500,"artifactType":"{artifact_type}"}}"#,
        sha256(seed.as_bytes())
    )
}

async fn referrers(proxy: &Proxy, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = reqwest::get(proxy.url(path)).await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn types(doc: &Value) -> Vec<&str> {
    doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_cached_whole_filtered_here_and_served_stale_and_offline() {
    let subject = sha256(b"image");
    let base = format!("/v2/app/referrers/{subject}");
    let failing = Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let (first, second) = (
        format!("[{},{}]", descriptor("sig", SIG), descriptor("sbom", SBOM)),
        format!("[{}]", descriptor("sbom-2", SBOM)),
    );
    let page_one = base.clone();
    let upstream = Scripted::start(move |_, path| {
        if fail.load(Ordering::SeqCst) {
            return answer(503, &[], "down");
        }
        let index = |manifests: &str| {
            format!(r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":{manifests}}}"#)
        };
        if path == page_one {
            let link = format!("<{page_one}?page=2>; rel=\"next\"");
            return answer(
                200,
                &[("content-type", INDEX), ("link", &link)],
                index(&first),
            );
        }
        if path == format!("{page_one}?page=2") {
            return answer(200, &[("content-type", INDEX)], index(&second));
        }
        answer(404, &[], "")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let online = "listing_ttl_secs = 1\nstale_if_error_secs = 600";
    let proxy = Proxy::start_with(&upstream.url(), online, Some(dir.path())).await;

    let (status, headers, doc) = referrers(&proxy, &base).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], INDEX);
    assert_eq!(types(&doc), [SIG, SBOM, SBOM], "both pages, merged");
    let (_, headers, doc) = referrers(&proxy, &format!("{base}?artifactType={SBOM}")).await;
    assert_eq!(types(&doc), [SBOM, SBOM]);
    assert_eq!(headers["oci-filters-applied"], "artifactType");
    assert_eq!(upstream.count("GET", &base), 1);
    assert_eq!(
        upstream.count("GET", "?page=2"),
        1,
        "asked once, served twice"
    );

    // Past its TTL with upstream down: the last answer, marked stale.
    failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, headers, doc) = referrers(&proxy, &base).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-regcache-stale"], "1");
    assert_eq!(types(&doc).len(), 3);
    proxy.stop().await;

    // Air-gapped: offline, from the disk record, whatever its age.
    let proxy = Proxy::start_with(&upstream.url(), "offline = true", Some(dir.path())).await;
    let asked = upstream.count("GET", "");
    let (status, headers, doc) = referrers(&proxy, &format!("{base}?artifactType={SIG}")).await;
    assert_eq!(status, 200);
    assert_eq!(types(&doc), [SIG]);
    assert!(!headers.contains_key("x-regcache-stale"));
    // Referrers never fetched: 404, so clients fall back to the tag schema.
    let (status, _, _) =
        referrers(&proxy, &format!("/v2/app/referrers/{}", sha256(b"other"))).await;
    assert_eq!(status, 404);
    assert_eq!(upstream.count("GET", ""), asked, "offline asks nobody");
}
