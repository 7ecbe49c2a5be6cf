//! `[cache]`: where the store lives and the memory tier's budget.

use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{Overrides, Problems};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    dir: Option<PathBuf>,
    memory_bytes: Option<ByteSize>,
    memory_max_object_bytes: Option<ByteSize>,
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Byte budget of the memory tier; 0 disables it.
    pub memory_bytes: u64,
    /// Objects larger than this never enter the memory tier.
    pub memory_max_object_bytes: u64,
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
        let memory_bytes = self.memory_bytes.map_or(256 << 20, |b| b.as_u64());
        let memory_max_object_bytes = self.memory_max_object_bytes.map_or(4 << 20, |b| b.as_u64());
        if memory_max_object_bytes > memory_bytes && memory_bytes > 0 {
            problems.add(
                "cache.memory_max_object_bytes",
                ByteSize(memory_max_object_bytes),
                "is larger than cache.memory_bytes; lower it or raise the budget",
            );
        }
        CacheConfig {
            dir,
            memory_bytes,
            memory_max_object_bytes,
        }
    }
}
