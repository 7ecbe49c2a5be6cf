//! Verify-while-streaming: what hashing adds to the copy a fill makes anyway
//! (upstream chunk -> temp file), in bytes per second.
//!
//! `cargo bench --bench verify_stream`

use std::io::{Seek, Write};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use regcache::oci::{Algorithm, Hasher};

const TOTAL: usize = 64 << 20;
/// About what hyper hands over per read on loopback.
const CHUNK: usize = 64 << 10;

fn chunks() -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..TOTAL / CHUNK)
        .map(|_| {
            (0..CHUNK)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = chunks();
    let mut group = c.benchmark_group("fill");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);

    group.bench_function("copy_to_file", |b| {
        b.iter_batched_ref(
            || tempfile::tempfile().unwrap(),
            |file| {
                for chunk in &data {
                    file.write_all(chunk).unwrap();
                }
                file.rewind().unwrap();
            },
            BatchSize::PerIteration,
        )
    });

    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        group.bench_function(format!("{}_only", algorithm.as_str()), |b| {
            b.iter(|| {
                let mut hasher = Hasher::new(algorithm);
                for chunk in &data {
                    hasher.update(chunk);
                }
                hasher.finish()
            })
        });
    }

    group.bench_function("sha256_and_copy_to_file", |b| {
        b.iter_batched_ref(
            || tempfile::tempfile().unwrap(),
            |file| {
                let mut hasher = Hasher::new(Algorithm::Sha256);
                for chunk in &data {
                    hasher.update(chunk);
                    file.write_all(chunk).unwrap();
                }
                file.rewind().unwrap();
                hasher.finish()
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
