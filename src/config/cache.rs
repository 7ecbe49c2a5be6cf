//! `[cache]`: where the store lives, the disk budget and its watermarks, the memory tier's
//! budget, and the global offline switch.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{Overrides, Problems};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    dir: Option<PathBuf>,
    disk_bytes: Option<String>,
    high_watermark: Option<f64>,
    low_watermark: Option<f64>,
    index_flush_secs: Option<u64>,
    lifecycle_sweep_secs: Option<u64>,
    memory_bytes: Option<ByteSize>,
    memory_max_object_bytes: Option<ByteSize>,
    max_blob_bytes: Option<ByteSize>,
    #[serde(default)]
    offline: bool,
}

/// How much disk the store may use: a fixed size, or a share of its filesystem's size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiskBudget {
    Bytes(u64),
    /// Percent (0, 100] of the filesystem holding the cache directory.
    Percent(f64),
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub disk_budget: DiskBudget,
    /// Eviction starts when the store passes `high_watermark` of the budget...
    pub high_watermark: f64,
    /// ...and stops once it is under `low_watermark` of it.
    pub low_watermark: f64,
    /// How often access recency is written to disk (it is also written at shutdown).
    pub index_flush: Duration,
    /// How often the upstreams' lifecycle rules are applied (also once after startup).
    pub lifecycle_sweep: Duration,
    /// Byte budget of the memory tier; 0 disables it.
    pub memory_bytes: u64,
    /// Objects larger than this never enter the memory tier.
    pub memory_max_object_bytes: u64,
    /// A blob fill stops (and the blob is refused) past this size, whatever upstream says.
    pub max_blob_bytes: u64,
    /// Never contact any upstream (each upstream may also be set offline on its own).
    pub offline: bool,
}

impl DiskBudget {
    fn parse(text: &str) -> Option<DiskBudget> {
        let text = text.trim();
        if let Some(pct) = text.strip_suffix('%') {
            let pct: f64 = pct.trim().parse().ok()?;
            return (pct > 0.0 && pct <= 100.0).then_some(DiskBudget::Percent(pct));
        }
        let bytes: ByteSize = text.parse().ok()?;
        (bytes.as_u64() > 0).then_some(DiskBudget::Bytes(bytes.as_u64()))
    }
}

impl RawCache {
    pub(super) fn validate(self, ov: &Overrides, problems: &mut Problems) -> CacheConfig {
        let dir = ov
            .cache_dir
            .clone()
            .or(self.dir)
            .or_else(|| dirs::cache_dir().map(|d| d.join("regcache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache/regcache"));
        if dir.as_os_str().is_empty() {
            problems.add("cache.dir", "", "must not be empty; give a directory path");
        }
        let disk_text = self.disk_bytes.unwrap_or_else(|| "80%".into());
        let disk_budget = DiskBudget::parse(&disk_text).unwrap_or_else(|| {
            problems.add(
                "cache.disk_bytes",
                format!("{disk_text:?}"),
                "give a size such as \"50GiB\" or a share of the filesystem such as \"80%\" (above 0)",
            );
            DiskBudget::Percent(80.0)
        });
        let high_watermark = self.high_watermark.unwrap_or(0.90);
        let low_watermark = self.low_watermark.unwrap_or(0.80);
        for (key, value) in [
            ("cache.high_watermark", high_watermark),
            ("cache.low_watermark", low_watermark),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                problems.add(
                    key,
                    value,
                    "must be a fraction above 0 and at most 1, e.g. 0.9",
                );
            }
        }
        if low_watermark >= high_watermark {
            problems.add(
                "cache.low_watermark",
                low_watermark,
                format!("must be below cache.high_watermark ({high_watermark}), e.g. 0.8 with 0.9"),
            );
        }
        let flush_secs = self.index_flush_secs.unwrap_or(300);
        if flush_secs == 0 {
            problems.add("cache.index_flush_secs", 0, "must be at least 1 second");
        }
        let sweep_secs = self.lifecycle_sweep_secs.unwrap_or(3600);
        if sweep_secs == 0 {
            problems.add("cache.lifecycle_sweep_secs", 0, "must be at least 1 second");
        }
        let memory_bytes = self.memory_bytes.map_or(256 << 20, |b| b.as_u64());
        let memory_max_object_bytes = self.memory_max_object_bytes.map_or(4 << 20, |b| b.as_u64());
        if memory_max_object_bytes > memory_bytes && memory_bytes > 0 {
            problems.add(
                "cache.memory_max_object_bytes",
                ByteSize(memory_max_object_bytes),
                "is larger than cache.memory_bytes; lower it or raise the budget",
            );
        }
        // The largest layers in the wild (CUDA, model weights) are some GiB; an endless
        // body must not fill the disk.
        let max_blob_bytes = self.max_blob_bytes.map_or(32 << 30, |b| b.as_u64());
        if max_blob_bytes == 0 {
            problems.add(
                "cache.max_blob_bytes",
                0,
                "must be above 0; give a size such as \"32GiB\" (the default)",
            );
        }
        CacheConfig {
            dir,
            max_blob_bytes: max_blob_bytes.max(1),
            disk_budget,
            high_watermark,
            low_watermark,
            index_flush: Duration::from_secs(flush_secs.max(1)),
            lifecycle_sweep: Duration::from_secs(sweep_secs.max(1)),
            memory_bytes,
            memory_max_object_bytes,
            offline: self.offline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_budgets_parse_as_sizes_or_percentages() {
        assert_eq!(
            DiskBudget::parse("50GiB"),
            Some(DiskBudget::Bytes(50 << 30))
        );
        assert_eq!(DiskBudget::parse(" 80 % "), Some(DiskBudget::Percent(80.0)));
        assert_eq!(DiskBudget::parse("0"), None);
        assert_eq!(DiskBudget::parse("120%"), None);
        assert_eq!(DiskBudget::parse("lots"), None);
    }
}
