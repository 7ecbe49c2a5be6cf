//! A synthetic but deterministic pull trace: a catalogue of images whose objects have
//! registry-like sizes, and pulls of those images with Zipf popularity.
//!
//! An image is a manifest, a config blob and its layers. Layers come from three places:
//! a shared base image (few, large, very popular), sometimes a shared runtime layer, and
//! the image's own layers, which mix small (KiB), ordinary (1-50 MiB) and large (100-500
//! MiB) sizes, each log-normal within its class. A pull asks for every object of the image,
//! as a client with an empty local store (a CI runner, a fresh node) does.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use regcache::oci::{Algorithm, Digest};
use regcache::store::memory;
use regcache::store::ObjectKey;

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// How big a trace to make.
pub struct Shape {
    pub images: usize,
    pub bases: usize,
    pub runtimes: usize,
    pub pulls: usize,
    /// The Zipf exponent of image (and base, runtime) popularity.
    pub zipf_s: f64,
    pub seed: u64,
}

pub struct Object {
    pub size: u64,
    pub disk: ObjectKey,
    pub memory: memory::Key,
}

pub struct Trace {
    pub objects: Vec<Object>,
    /// Each image's objects (indexes into `objects`), manifest first.
    pub images: Vec<Vec<u32>>,
    /// Which image each pull asks for, in order.
    pub pulls: Vec<u32>,
}

impl Trace {
    /// Bytes of the catalogue, each object counted once.
    pub fn unique_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    /// How many objects are at most `limit` bytes.
    pub fn at_most(&self, limit: u64) -> usize {
        self.objects.iter().filter(|o| o.size <= limit).count()
    }
}

/// Samples ranks 0..n with probability proportional to 1 / (rank + 1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= total);
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A log-normal size around `median` (geometric spread `sigma`), clamped to [lo, hi].
fn log_normal(rng: &mut StdRng, median: f64, sigma: f64, lo: f64, hi: f64) -> u64 {
    // Box-Muller: one standard normal from two uniforms.
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (median * (sigma * z).exp()).clamp(lo, hi) as u64
}

/// One of the image's own layers: small, ordinary or large.
fn own_layer(rng: &mut StdRng) -> u64 {
    let class: f64 = rng.random();
    if class < 0.40 {
        log_normal(rng, 64.0 * KIB, 1.5, KIB, MIB)
    } else if class < 0.92 {
        log_normal(rng, 8.0 * MIB, 0.9, MIB, 50.0 * MIB)
    } else {
        // Log-uniform between 100 and 500 MiB.
        let u: f64 = rng.random();
        (100.0 * MIB * 5f64.powf(u)) as u64
    }
}

struct Builder {
    objects: Vec<Object>,
}

impl Builder {
    fn add(&mut self, size: u64, manifest: bool) -> u32 {
        let id = self.objects.len() as u32;
        // Any distinct digest will do: the tiers key objects by it and never look inside.
        let digest = Digest::of(Algorithm::Sha256, &id.to_le_bytes());
        let (disk, memory) = match manifest {
            true => (ObjectKey::manifest(&digest), memory::Key::Manifest(digest)),
            false => (ObjectKey::blob(&digest), memory::Key::Blob(digest)),
        };
        self.objects.push(Object { size, disk, memory });
        id
    }
}

pub fn generate(shape: &Shape) -> Trace {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let mut b = Builder {
        objects: Vec::new(),
    };
    let bases: Vec<u32> = (0..shape.bases)
        .map(|_| {
            let size = log_normal(&mut rng, 30.0 * MIB, 0.8, 2.0 * MIB, 200.0 * MIB);
            b.add(size, false)
        })
        .collect();
    let runtimes: Vec<u32> = (0..shape.runtimes)
        .map(|_| {
            let size = log_normal(&mut rng, 40.0 * MIB, 0.7, 5.0 * MIB, 300.0 * MIB);
            b.add(size, false)
        })
        .collect();
    let (base_pop, runtime_pop) = (
        Zipf::new(shape.bases, shape.zipf_s),
        Zipf::new(shape.runtimes, shape.zipf_s),
    );
    let images = (0..shape.images)
        .map(|_| {
            let manifest = log_normal(&mut rng, 1.5 * KIB, 0.4, 400.0, 16.0 * KIB);
            let config = log_normal(&mut rng, 6.0 * KIB, 0.7, KIB, 64.0 * KIB);
            let mut objects = vec![b.add(manifest, true), b.add(config, false)];
            objects.push(bases[base_pop.sample(&mut rng)]);
            if rng.random::<f64>() < 0.6 {
                objects.push(runtimes[runtime_pop.sample(&mut rng)]);
            }
            for _ in 0..rng.random_range(1..=6) {
                let size = own_layer(&mut rng);
                objects.push(b.add(size, false));
            }
            objects
        })
        .collect();
    let popularity = Zipf::new(shape.images, shape.zipf_s);
    let pulls = (0..shape.pulls)
        .map(|_| popularity.sample(&mut rng) as u32)
        .collect();
    Trace {
        objects: b.objects,
        images,
        pulls,
    }
}
