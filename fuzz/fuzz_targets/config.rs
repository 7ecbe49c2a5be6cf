//! Config files: any text gives a config or a list of problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache::config::{Config, Overrides};

fuzz_target!(|text: &str| {
    if let Err(e) = Config::parse(text, "fuzz", &Overrides::default()) {
        assert!(!e.problems.is_empty());
    }
});
