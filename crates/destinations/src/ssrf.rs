//! The SSRF guard: outbound requests to loopback, private, link-local and other
//! non-public addresses are refused unless a destination sets `allow_private_networks`.
//!
//! Checked twice: at configuration time for IP literals and `localhost` names (a clear
//! error before anything runs), and at connection time by [`GuardedResolver`], so that a
//! public name resolving to a private address (or re-resolving to one later) is refused
//! too. Redirects are never followed (see `http`), so they cannot bypass either check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address is not public, or `None` when it is.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_reason(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                // NAT64 can reach any IPv4 address, private ones included.
                Some("NAT64")
            } else {
                None
            }
        }
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

/// Why the guard refuses a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error("has no host")]
    NoHost,
    #[error("{0} is a loopback name; set allow_private_networks = true to send to it")]
    LoopbackName(String),
    #[error("{ip} is a {why} address; set allow_private_networks = true to send to it")]
    Address { ip: IpAddr, why: &'static str },
}

/// Checks a URL's host at configuration time. Names other than `localhost` are checked
/// when connecting.
pub fn check_url(u: &url::Url) -> Result<(), Blocked> {
    let ip = match u.host() {
        None => return Err(Blocked::NoHost),
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Err(Blocked::LoopbackName(name));
            }
            return Ok(());
        }
    };
    match forbidden_reason(ip) {
        Some(why) => Err(Blocked::Address { ip, why }),
        None => Ok(()),
    }
}

/// A DNS resolver that drops non-public addresses and fails when none is left.
#[derive(Debug, Default, Clone)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let total = addrs.len();
            let public: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| forbidden_reason(a.ip()).is_none())
                .collect();
            if public.is_empty() {
                let msg = if total == 0 {
                    format!("{host} has no addresses")
                } else {
                    format!(
                        "refused: {host} resolves only to non-public addresses (allow_private_networks is off)"
                    )
                };
                return Err(msg.into());
            }
            let it: Addrs = Box::new(public.into_iter());
            Ok(it)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for (ip, public) in [
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("::1", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("64:ff9b::a00:1", false),
            ("8.8.8.8", true),
            ("93.184.216.34", true),
            ("2606:4700::1111", true),
            ("::ffff:8.8.8.8", true),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden_reason(ip).is_none(), public, "{ip}");
        }
    }

    #[test]
    fn config_time_check_names_the_problem() {
        for (url, ok) in [
            ("http://127.0.0.1:9000/in", false),
            ("http://[::1]/x", false),
            ("http://localhost:8080/", false),
            ("http://api.localhost/", false),
            ("http://169.254.169.254/latest/meta-data", false),
            ("https://hooks.example.com/in", true),
            ("https://8.8.8.8/", true),
        ] {
            let r = check_url(&url::Url::parse(url).unwrap());
            assert_eq!(r.is_ok(), ok, "{url}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("allow_private_networks"), "{e}");
            }
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        use std::str::FromStr;
        let name = Name::from_str("localhost").unwrap();
        let err = match GuardedResolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("non-public") || err.contains("no addresses"),
            "{err}"
        );
    }
}
