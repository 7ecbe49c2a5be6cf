//! Which network an address is on, and so whether regcache may follow an upstream's
//! redirect there: a public address always, a loopback, private, link-local or metadata
//! address only when the upstream itself lives on that kind of network. Pure; no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kinds of network a redirect may lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Public,
    Loopback,
    /// RFC 1918, carrier-grade NAT (100.64/10) and IPv6 unique local (fc00::/7).
    Private,
    /// 169.254/16 and fe80::/10, where cloud metadata services answer.
    LinkLocal,
    /// Cloud instance metadata outside link-local: AWS's fd00:ec2::254, Alibaba's
    /// 100.100.100.200. They hand out the host's credentials, so they get their own class.
    Metadata,
    /// Unspecified (0.0.0.0 connects to this host on Linux), multicast, broadcast, reserved.
    Special,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Public => "public",
            Class::Loopback => "loopback",
            Class::Private => "private",
            Class::LinkLocal => "link-local",
            Class::Metadata => "cloud metadata",
            Class::Special => "unspecified, multicast or reserved",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

pub fn classify(ip: IpAddr) -> Class {
    // ::ffff:127.0.0.1 is 127.0.0.1 to the kernel, so it is judged as that.
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let [a, b, ..] = ip.octets();
    if ip == ALIBABA_METADATA {
        Class::Metadata
    } else if ip.is_loopback() {
        Class::Loopback
    } else if ip.is_link_local() {
        Class::LinkLocal
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Class::Private
    } else if a == 0 || a >= 224 {
        // 0/8 "this network", 224/4 multicast, 240/4 reserved and the broadcast address.
        Class::Special
    } else {
        Class::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    if ip == AWS_METADATA_V6 {
        Class::Metadata
    } else if ip.is_loopback() {
        Class::Loopback
    } else if ip.is_unicast_link_local() {
        Class::LinkLocal
    } else if ip.is_unique_local() {
        Class::Private
    } else if ip.is_unspecified() || ip.is_multicast() {
        Class::Special
    } else {
        Class::Public
    }
}

/// A set of classes, small enough to keep in an atomic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classes(pub u8);

impl Classes {
    pub fn of(class: Class) -> Classes {
        Classes(class.bit())
    }

    pub fn with(self, class: Class) -> Classes {
        Classes(self.0 | class.bit())
    }

    pub fn contains(self, class: Class) -> bool {
        self.0 & class.bit() != 0
    }

    /// May regcache connect to `class` for an upstream that lives in `self`?
    pub fn allow(self, class: Class) -> bool {
        class == Class::Public || self.contains(class)
    }
}

/// The class of a URL host when it can be told without DNS: an IP literal, or `localhost`
/// (and `*.localhost`, which resolvers must answer with loopback, RFC 6761).
pub fn literal_class(host: &url::Host<&str>) -> Option<Class> {
    match host {
        url::Host::Ipv4(ip) => Some(classify(IpAddr::V4(*ip))),
        url::Host::Ipv6(ip) => Some(classify(IpAddr::V6(*ip))),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost")).then_some(Class::Loopback)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Class {
        classify(s.parse().unwrap())
    }

    #[test]
    fn addresses_fall_into_their_networks() {
        for (ip, want) in [
            ("8.8.8.8", Class::Public),
            ("2606:4700::1111", Class::Public),
            ("127.0.0.1", Class::Loopback),
            ("127.1.2.3", Class::Loopback),
            ("::1", Class::Loopback),
            ("::ffff:127.0.0.1", Class::Loopback),
            ("10.0.0.1", Class::Private),
            ("172.16.5.4", Class::Private),
            ("192.168.1.1", Class::Private),
            ("100.64.0.1", Class::Private),
            ("fd12:3456::1", Class::Private),
            ("169.254.169.254", Class::LinkLocal),
            ("::ffff:169.254.169.254", Class::LinkLocal),
            ("fe80::1", Class::LinkLocal),
            ("fd00:ec2::254", Class::Metadata),
            ("100.100.100.200", Class::Metadata),
            ("0.0.0.0", Class::Special),
            ("::", Class::Special),
            ("224.0.0.1", Class::Special),
            ("255.255.255.255", Class::Special),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn only_public_addresses_and_the_upstreams_own_network_are_allowed() {
        let loopback = Classes::of(Class::Loopback);
        assert!(loopback.allow(Class::Public));
        assert!(loopback.allow(Class::Loopback));
        assert!(!loopback.allow(Class::LinkLocal));
        assert!(!loopback.allow(Class::Private));
        let public = Classes::of(Class::Public);
        for c in [
            Class::Loopback,
            Class::Private,
            Class::Metadata,
            Class::Special,
        ] {
            assert!(!public.allow(c), "{c:?}");
        }
        assert!(Classes::default()
            .with(Class::Private)
            .allow(Class::Private));
    }

    #[test]
    fn localhost_is_loopback_without_asking_dns() {
        let class = |s: &str| literal_class(&url::Url::parse(s).unwrap().host().unwrap());
        assert_eq!(class("http://localhost:5000/"), Some(Class::Loopback));
        assert_eq!(class("http://LOCALHOST./"), Some(Class::Loopback));
        assert_eq!(class("http://a.localhost/"), Some(Class::Loopback));
        assert_eq!(class("http://[fd00:ec2::254]/"), Some(Class::Metadata));
        assert_eq!(class("http://169.254.169.254/"), Some(Class::LinkLocal));
        assert_eq!(class("https://cdn.example.com/"), None);
    }
}
