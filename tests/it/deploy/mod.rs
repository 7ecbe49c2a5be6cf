//! Running where users run it: `regcache doctor` on node configurations.

mod containerd;
mod doctor;
