//! Connections per client address: a cap beside `server.max_connections`, so one host
//! (a slowloris flood, a runaway client) cannot hold every connection of a listener.
//!
//! Counts only; refusing and counting the refusal is the accept loop's business.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections of each client address on one listener.
pub struct Peers {
    max_per_ip: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place; dropping it gives the place back.
pub struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    pub fn new(max_per_ip: usize) -> Arc<Peers> {
        Arc::new(Peers {
            max_per_ip,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or `None` when it holds its maximum.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        // A dual-stack listener shows IPv4 clients as ::ffff:a.b.c.d: the same host.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            // Forget addresses with nothing open, so the map holds only what is connected.
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_maximum() {
        let peers = Peers::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = peers.admit(a).unwrap();
        let _second = peers.admit(mapped).unwrap();
        assert!(peers.admit(a).is_none(), "the mapped form is the same host");
        let _other = peers.admit(b).unwrap();
        drop(first);
        assert!(peers.admit(a).is_some());
        drop(_other);
        assert!(!peers.open.lock().unwrap().contains_key(&b));
    }
}
