//! Hit ratios of the memory and disk tiers on a Zipf-like pull trace, for a few budgets,
//! printed as Markdown tables (see benches/README.md).
//!
//! `cargo bench --bench tiers` replays the full trace; without `--bench` (as
//! `cargo test --benches` runs it) a small trace checks that the replay works.

mod replay;
mod trace;

use replay::{replay, Budgets, Outcome};
use trace::{generate, Shape, Trace};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `cache.memory_max_object_bytes`'s default.
const MEMORY_MAX_OBJECT: u64 = 4 * MIB;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let shape = match full {
        true => Shape {
            images: 2_000,
            bases: 40,
            runtimes: 150,
            pulls: 50_000,
            zipf_s: 1.0,
            seed: 4,
        },
        false => Shape {
            images: 100,
            bases: 5,
            runtimes: 10,
            pulls: 1_000,
            zipf_s: 1.0,
            seed: 4,
        },
    };
    let trace = generate(&shape);
    describe(&trace, &shape);
    let unique = trace.unique_bytes();
    let (memories, disk_shares): (&[u64], &[u64]) = match full {
        true => (&[64 * MIB, 256 * MIB, GIB], &[10, 25, 50]),
        false => (&[64 * MIB], &[25]),
    };
    let mut total = std::time::Duration::ZERO;

    println!("\n### Memory tier (disk budget 25% of the catalogue)\n");
    println!("| memory budget | hit % by objects | hit % by bytes | hit % of objects <= 4 MiB | replay s |");
    println!("|---|---|---|---|---|");
    let small = small_requests(&trace);
    for &memory in memories {
        let out = run(&trace, memory, unique / 4);
        total += out.took;
        println!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.2} |",
            size(memory),
            pct(out.memory.by_objects()),
            pct(out.memory.by_bytes()),
            100.0 * out.memory.hits as f64 / small.max(1) as f64,
            out.took.as_secs_f64()
        );
        check(&out);
    }

    println!("\n### Disk tier (memory budget 256 MiB)\n");
    println!("| disk budget | disk hit % by objects | disk hit % by bytes | both tiers hit % by objects | both tiers hit % by bytes | upstream GiB | evictions | replay s |");
    println!("|---|---|---|---|---|---|---|---|");
    for &share in disk_shares {
        let budget = unique * share / 100;
        let out = run(&trace, 256 * MIB, budget);
        total += out.took;
        let overall = &out.overall;
        println!(
            "| {share}% ({}) | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {:.2} |",
            size(budget),
            pct(out.disk.by_objects()),
            pct(out.disk.by_bytes()),
            pct(overall.by_objects()),
            pct(overall.by_bytes()),
            (overall.request_bytes - overall.hit_bytes) as f64 / GIB as f64,
            out.evictions,
            out.took.as_secs_f64()
        );
        check(&out);
    }
    println!("\nreplays took {:.2} s in all", total.as_secs_f64());
}

fn run(trace: &Trace, memory: u64, disk: u64) -> Outcome {
    let budgets = Budgets {
        memory,
        memory_max_object: MEMORY_MAX_OBJECT,
        disk,
    };
    replay(trace, &budgets)
}

/// Requests the memory tier could ever answer (objects within its per-object limit).
fn small_requests(trace: &Trace) -> u64 {
    trace
        .pulls
        .iter()
        .flat_map(|&i| &trace.images[i as usize])
        .filter(|&&id| trace.objects[id as usize].size <= MEMORY_MAX_OBJECT)
        .count() as u64
}

/// Invariants any replay must keep, so the smoke run in `cargo test` checks something.
fn check(out: &Outcome) {
    assert_eq!(out.disk.requests, out.memory.requests - out.memory.hits);
    assert_eq!(out.overall.hits, out.memory.hits + out.disk.hits);
    assert!(out.overall.hits > 0 && out.overall.hits < out.overall.requests);
}

fn describe(trace: &Trace, shape: &Shape) {
    let requests: usize = trace
        .pulls
        .iter()
        .map(|&i| trace.images[i as usize].len())
        .sum();
    let requested: u64 = trace
        .pulls
        .iter()
        .flat_map(|&i| &trace.images[i as usize])
        .map(|&id| trace.objects[id as usize].size)
        .sum();
    let n = trace.objects.len();
    let (kib64, mib, mib100) = (
        trace.at_most(64 << 10),
        trace.at_most(MIB),
        n - trace.at_most(100 * MIB),
    );
    println!(
        "catalogue: {} images, {n} objects, {} ({} <= 64 KiB, {} <= 1 MiB, {} over 100 MiB)",
        shape.images,
        size(trace.unique_bytes()),
        kib64,
        mib,
        mib100
    );
    println!(
        "trace: {} pulls (Zipf s = {}, seed {}), {requests} requests, {} requested",
        shape.pulls,
        shape.zipf_s,
        shape.seed,
        size(requested)
    );
}

fn pct(ratio: f64) -> f64 {
    100.0 * ratio
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 40 => format!("{:.1} TiB", b as f64 / (1u64 << 40) as f64),
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b => format!("{:.0} MiB", b as f64 / MIB as f64),
    }
}
