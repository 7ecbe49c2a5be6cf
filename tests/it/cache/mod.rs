//! The cache: the disk budget and eviction, crashes, a full disk, one writer per store
//! (operator commands through the daemon that owns it), membership, stale tags, isolation between repositories.

mod crash;
mod diskfull;
mod isolation;
mod longrun;
mod membership_prune;
mod owner;
mod stale;
