//! The status page in a real browser: headless Chromium loads it (through the token link,
//! as an operator would) from a daemon that served real pulls, and every number it
//! rendered is checked against `/metrics`. The screenshot is kept as
//! `target/test-artifacts/status-page.png`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::fake::{FakeRegistry, Fault};
use crate::support::images;
use crate::support::regcache::{series, Regcache};
use crate::support::registry::{run_bounded, Registry};
use crate::support::skopeo;

const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_what_metrics_say() {
    let Some(chromium) = chromium() else {
        crate::support::skip("chromium is not installed (tests/run.sh installs it)");
        return;
    };
    let registry = Registry::start();
    let url = registry.url();
    let a = images::push_oci_image(&url, "shop/web", "v1", &[2 << 20, 64 << 10], 31).await;
    let b = images::push_oci_image(&url, "shop/db", "v1", &[512 << 10], 32).await;
    // A second upstream whose blob stops halfway, for a fill in progress on the page.
    let slow = FakeRegistry::start().await;
    let held = slow.add_blob(vec![7u8; 4 << 20]);
    slow.set_fault(&held, Fault::Held);
    let work = tempfile::tempdir().unwrap();
    let (cache, token_file) = (work.path().join("cache"), work.path().join("token"));
    let config = format!(
        "[admin]\ntoken_file = \"{}\"\negress_price_per_gb = 0.09\n\
         [[upstream]]\nurl = \"{url}\"\n[[upstream]]\nname = \"slow\"\nurl = \"{}\"\n",
        token_file.display(),
        slow.url()
    );
    let proxy = Regcache::start_with_config(&config, &cache);
    // A miss and then hits for one image, one pull of the other.
    for (image, name) in [(&a, "a1"), (&a, "a2"), (&a, "a3"), (&b, "b1")] {
        let reference = format!("{}:{}", image.repo, image.tag);
        let pulled = skopeo::pull(&proxy.addr(), &reference, work.path(), name);
        skopeo::check_pulled(&pulled.unwrap_or_else(|e| panic!("{e}")), image);
    }
    proxy.settled().await;
    let pending = tokio::spawn(reqwest::get(format!(
        "{}/v2/slow/team/big/blobs/{held}",
        proxy.url()
    )));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(cache.join("v1/tmp")).map_or(0, |d| d.count()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fill never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = std::fs::read_to_string(&token_file).unwrap();
    let page = format!("http://{}/?token={}", proxy.admin_addr(), token.trim());
    let without = reqwest::get(format!("http://{}/", proxy.admin_addr()))
        .await
        .unwrap();
    assert_eq!(without.status().as_u16(), 401, "the page needs the token");

    let profile = work.path().join("profile");
    let dom_file = work.path().join("dom.html");
    let mut dump = browser(&chromium, &profile);
    dump.arg("--dump-dom").arg(&page);
    let status = run_bounded(&mut dump, &dom_file, BROWSER_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "chromium: {status:?}");
    let dom = std::fs::read_to_string(&dom_file).unwrap();
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never rendered data:\n{dom}"
    );
    let shown = fields(&dom);
    let metrics = proxy.metrics().await;
    let sum = |name: &str, want: &[(&str, &str)]| -> f64 {
        series(&metrics, name)
            .into_iter()
            .filter(|(labels, _)| {
                want.iter().all(|(k, v)| {
                    let value = labels.get(*k).map(String::as_str).unwrap_or_default();
                    v.split('|').any(|alt| alt == value)
                })
            })
            .map(|(_, v)| v)
            .sum()
    };
    let value = |field: &str| -> f64 {
        let raw = shown
            .get(field)
            .unwrap_or_else(|| panic!("{field} is not on the page: {dom}"));
        raw.parse().unwrap_or_else(|_| panic!("{field} = {raw:?}"))
    };

    let mut checked = 0;
    for result in ["memory_hit", "disk_hit", "coalesced", "miss", "error"] {
        let want = sum(
            "regcache_requests_total",
            &[("kind", "manifest|blob"), ("result", result)],
        );
        assert_eq!(value(&format!("requests.total.{result}")), want, "{result}");
        checked += 1;
    }
    assert!(
        value("requests.total.miss") > 0.0
            && value("requests.total.disk_hit") + value("requests.total.memory_hit") > 0.0
    );
    let mut saved = 0.0;
    for source in ["memory", "disk", "upstream"] {
        let want = sum("regcache_served_bytes_total", &[("source", source)]);
        assert_eq!(value(&format!("served_bytes.{source}")), want, "{source}");
        if source != "upstream" {
            saved += want;
        }
        checked += 1;
    }
    assert!(saved > 2e6, "the repeated pulls were served from the cache");
    assert_eq!(value("egress_saved.bytes"), saved);
    assert!((value("egress_saved.amount") - saved / 1e9 * 0.09).abs() < 1e-9);
    assert_eq!(value("disk.used_bytes"), sum("regcache_disk_bytes", &[]));
    assert_eq!(value("disk.objects"), sum("regcache_disk_objects", &[]));
    assert_eq!(
        value("disk.budget_bytes"),
        sum("regcache_disk_limit_bytes", &[("limit", "budget")])
    );
    assert_eq!(
        value("disk.high_watermark_bytes"),
        sum("regcache_disk_limit_bytes", &[("limit", "high")])
    );
    let upstream = registry.addr();
    let requests = sum(
        "regcache_upstream_requests_total",
        &[("upstream", &upstream)],
    );
    assert!(requests > 0.0);
    assert_eq!(value(&format!("upstreams.{upstream}.requests")), requests);
    checked += 8;
    let hits = sum(
        "regcache_requests_total",
        &[
            ("kind", "manifest|blob"),
            (
                "result",
                "memory_hit|disk_hit|bucket_hit|redirected|coalesced",
            ),
        ],
    );
    let answered = hits
        + sum(
            "regcache_requests_total",
            &[("kind", "manifest|blob"), ("result", "miss")],
        );
    assert!((value("hit_ratio.total") - hits / answered).abs() < 1e-9);
    // Three pulls of shop/web, one of shop/db; web's layers take the most room.
    let pulls = |repo: &str| value(&format!("most_pulled_repositories.{upstream}/{repo}"));
    assert!(pulls("shop/web") > pulls("shop/db") && pulls("shop/db") > 0.0);
    assert!(value(&format!("largest_repositories.{upstream}/shop/web")) > 2e6);
    let fill = format!("fills.{held}.written");
    assert!(
        value(&fill) >= (2 << 20) as f64,
        "half the held blob: {}",
        value(&fill)
    );
    checked += 5;
    eprintln!("{checked} numbers on the status page match /metrics");

    let shot = artifacts().join("status-page.png");
    let mut screenshot = browser(&chromium, &profile);
    screenshot
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,1060")
        .arg(&page);
    let status = run_bounded(
        &mut screenshot,
        &work.path().join("shot.log"),
        BROWSER_TIMEOUT,
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium screenshot: {status:?}"
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "a blank screenshot? {size} bytes at {}",
        shot.display()
    );
    slow.release();
    let body = pending.await.unwrap().unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), 4 << 20);
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .map(|name| Path::new("/usr/bin").join(name))
        .find(|path| path.exists())
}

/// Headless Chromium with a private profile; it waits (in virtual time) for the page's
/// script to fetch and render.
fn browser(chromium: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Where tests leave files for people: `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every `data-field` with its `data-value` in the rendered DOM.
fn fields(dom: &str) -> HashMap<String, String> {
    let attribute = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(
            tag[start..start + len]
                .replace("&amp;", "&")
                .replace("&quot;", "\""),
        )
    };
    dom.split('<')
        .filter_map(|tag| {
            let tag = tag.split('>').next()?;
            Some((attribute(tag, "data-field")?, attribute(tag, "data-value")?))
        })
        .collect()
}
