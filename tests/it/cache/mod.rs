//! The cache: the disk budget and eviction, crashes, a full disk, operator commands
//! beside a daemon, membership, stale tags, isolation between repositories.

mod beside;
mod crash;
mod diskfull;
mod isolation;
mod longrun;
mod membership_prune;
mod stale;
