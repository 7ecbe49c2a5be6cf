//! The pieces of a cache hit, each on its own: route parsing, a memory-tier hit and a
//! disk-tier lookup (open + length of a stored blob).
//!
//! `cargo bench --bench hot_path`

use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use regcache::config::{Config, Overrides};
use regcache::metrics::Metrics;
use regcache::metrics::Outcome;
use regcache::mirror::Mirror;
use regcache::oci::{self, Algorithm, Digest};
use regcache::store::lifecycle::Rules;

fn store_blob(cache: &Mirror, bytes: &[u8]) -> Digest {
    let digest = Digest::of(Algorithm::Sha256, bytes);
    let (mut file, temp) = cache.store().temp_file().unwrap();
    file.write_all(bytes).unwrap();
    cache
        .store()
        .publish(&temp, &cache.store().blob_path(&digest))
        .unwrap();
    digest
}

fn bench(c: &mut Criterion) {
    let paths = [
        "/v2/library/nginx/manifests/1.27",
        "/v2/team/project/app/blobs/sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
    ];
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(paths.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| {
            paths
                .iter()
                .filter(|p| oci::route::parse(p).is_ok())
                .count()
        })
    });
    group.finish();

    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        cache_dir: Some(dir.path().to_path_buf()),
        ..Overrides::default()
    };
    let text = "[cache]\nmemory_bytes = \"64MiB\"\nmemory_max_object_bytes = \"1MiB\"\n\
                [[upstream]]\nurl = \"http://127.0.0.1:9\"\n";
    let config = Config::parse(text, "bench", &overrides).unwrap();
    let rules = Rules::new(&config.upstreams);
    // Opening the cache starts its background index work, which needs a runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let cache = Mirror::open(&config.cache, None, None, rules, Metrics::new()).unwrap();
    let small = store_blob(&cache, &[1u8; 16 << 10]);
    let large = store_blob(&cache, &vec![2u8; 8 << 20]);

    let mut group = c.benchmark_group("cache");
    group.throughput(Throughput::Elements(1));
    // The first lookup promotes the small blob to memory; the measured ones hit memory.
    runtime.block_on(cache.held_blob(&small));
    group.bench_function("memory_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            match cache.held_blob(&small).await {
                Some((Outcome::MemoryHit, len)) => len,
                _ => panic!("expected a memory hit"),
            }
        })
    });
    group.bench_function("disk_lookup", |b| {
        b.to_async(&runtime).iter(|| async {
            match cache.held_blob(&large).await {
                Some((Outcome::DiskHit, len)) => len,
                _ => panic!("expected a disk hit"),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
