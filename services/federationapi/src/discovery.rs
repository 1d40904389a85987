//! Server discovery: where to send a request for a server name, as the
//! server-server API's resolution steps say: an IP literal, an explicit
//! port, `/.well-known/matrix/server` delegation, SRV records
//! (`_matrix-fed._tcp`, then the deprecated `_matrix._tcp`), else port
//! 8448. Every address connected to passes the IP deny list.
//!
//! The steps are plain functions over what was looked up ([`plan`],
//! [`after_well_known`], [`after_srv`]), so they are tested without a
//! network; [`Discovery`] does the lookups and caches the answers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Where requests for a server go: the URL's host and port (the host is
/// also what the TLS certificate must be valid for), the host to connect
/// to when it differs (an SRV target), and the `Host` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    /// A hostname, or an IP literal (IPv6 in brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The host whose addresses are connected to (an SRV target), when it
    /// is not `host`.
    pub(crate) connect_to: Option<String>,
    pub(crate) host_header: String,
}

impl Destination {
    pub(crate) fn base_url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }
}

/// The first step for a server name: done already, or a lookup to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    Done(Destination),
    /// Fetch `https://<hostname>/.well-known/matrix/server` next.
    WellKnown {
        hostname: String,
    },
}

const DEFAULT_PORT: u16 = 8448;

/// Splits `host[:port]` (IPv6 literals in brackets).
fn split_host_port(name: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((format!("[{ip}]"), port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), Some(port.parse().ok()?))),
        None => Some((name.to_owned(), None)),
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.starts_with('[') || host.parse::<IpAddr>().is_ok()
}

/// Steps 1 and 2 (and, with `delegated`, 3.1 and 3.2): an IP literal or an
/// explicit port needs no lookup but the address itself.
fn direct(name: &str) -> Option<Result<Destination, ()>> {
    let Some((host, port)) = split_host_port(name) else {
        return Some(Err(()));
    };
    if is_ip_literal(&host) || port.is_some() {
        return Some(Ok(Destination {
            host,
            port: port.unwrap_or(DEFAULT_PORT),
            connect_to: None,
            host_header: name.to_owned(),
        }));
    }
    None
}

/// Where resolution of `server_name` starts; `None` for a name that is
/// not a server name.
pub(crate) fn plan(server_name: &str) -> Option<Plan> {
    match direct(server_name) {
        Some(Ok(destination)) => Some(Plan::Done(destination)),
        Some(Err(())) => None,
        None => Some(Plan::WellKnown {
            hostname: server_name.to_owned(),
        }),
    }
}

/// After the well-known lookup of `hostname`: its delegated server name
/// (`m.server`), if it had a valid one. `Ok(destination)` when that is
/// settled; `Err(name)` when SRV records of `name` decide.
pub(crate) fn after_well_known(
    hostname: &str,
    delegated: Option<&str>,
) -> Result<Destination, String> {
    match delegated {
        Some(delegated) => match direct(delegated) {
            Some(Ok(destination)) => Ok(destination),
            // A delegation that is not a server name counts as none.
            Some(Err(())) => Err(hostname.to_owned()),
            None => Err(delegated.to_owned()),
        },
        None => Err(hostname.to_owned()),
    }
}

/// After the SRV lookups of `name` (a hostname without port): the
/// target and port of the best record found, if any.
pub(crate) fn after_srv(name: &str, srv: Option<(String, u16)>) -> Destination {
    match srv {
        Some((target, port)) => Destination {
            host: name.to_owned(),
            port,
            connect_to: Some(target.trim_end_matches('.').to_owned()),
            host_header: name.to_owned(),
        },
        None => Destination {
            host: name.to_owned(),
            port: DEFAULT_PORT,
            connect_to: None,
            host_header: name.to_owned(),
        },
    }
}

/// The address ranges outbound federation may not connect to.
#[derive(Debug, Clone, Default)]
pub(crate) struct IpRanges {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

/// A configured range that is not CIDR.
#[derive(Debug, thiserror::Error)]
#[error("not an IP range (CIDR): {0}")]
pub struct BadRange(String);

impl IpRanges {
    pub(crate) fn new(deny: &[String], allow: &[String]) -> Result<IpRanges, BadRange> {
        let parse = |ranges: &[String]| {
            ranges
                .iter()
                .map(|r| r.parse::<IpNet>().map_err(|_| BadRange(r.clone())))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(IpRanges {
            deny: parse(deny)?,
            allow: parse(allow)?,
        })
    }

    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4 address mapped into IPv6 is judged as the IPv4 one.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allow.iter().any(|r| r.contains(&ip)) || !self.deny.iter().any(|r| r.contains(&ip))
    }
}

/// Why a server could not be reached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoveryError {
    #[error("not a server name: {0}")]
    BadName(String),
    #[error("{0} resolves to no address federation may connect to")]
    Denied(String),
}

/// How long a discovered destination is used before it is looked up again.
const CACHE_FOR: Duration = Duration::from_secs(3600);

/// Looks destinations up and keeps them for a while.
pub(crate) struct Discovery {
    ranges: IpRanges,
    /// Fetches well-known files (connects only where `ranges` allow).
    well_known_client: reqwest::Client,
    srv: Option<hickory_resolver::TokioResolver>,
    cache: Mutex<HashMap<String, (Destination, Instant)>>,
}

impl Discovery {
    pub(crate) fn new(
        ranges: IpRanges,
        well_known_client: reqwest::Client,
        nameservers: &[String],
    ) -> Discovery {
        Discovery {
            ranges,
            well_known_client,
            srv: srv_resolver(nameservers),
            cache: Mutex::default(),
        }
    }

    /// Where requests for `server_name` go now.
    pub(crate) async fn destination(
        &self,
        server_name: &str,
    ) -> Result<Destination, DiscoveryError> {
        if let Some((destination, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(server_name)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(destination.clone());
        }
        if ruma::ServerName::parse(server_name).is_err() {
            return Err(DiscoveryError::BadName(server_name.to_owned()));
        }
        let destination = match plan(server_name) {
            None => return Err(DiscoveryError::BadName(server_name.to_owned())),
            Some(Plan::Done(destination)) => destination,
            Some(Plan::WellKnown { hostname }) => {
                let delegated = self.well_known(&hostname).await;
                match after_well_known(&hostname, delegated.as_deref()) {
                    Ok(destination) => destination,
                    Err(name) => after_srv(&name, self.srv_lookup(&name).await),
                }
            }
        };
        if is_ip_literal(&destination.host) {
            let ip: Option<IpAddr> = destination
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok();
            if !ip.is_some_and(|ip| self.ranges.allows(ip)) {
                return Err(DiscoveryError::Denied(server_name.to_owned()));
            }
        }
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            server_name.to_owned(),
            (destination.clone(), Instant::now()),
        );
        Ok(destination)
    }

    /// `m.server` of the host's well-known file, if it has a valid one.
    async fn well_known(&self, hostname: &str) -> Option<String> {
        let url = format!("https://{hostname}/.well-known/matrix/server");
        let response = self.well_known_client.get(&url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: serde_json::Value = response.json().await.ok()?;
        let delegated = body.get("m.server")?.as_str()?;
        ruma::ServerName::parse(delegated).ok()?;
        Some(delegated.to_owned())
    }

    /// The best SRV record of `_matrix-fed._tcp.<name>`, else of the
    /// deprecated `_matrix._tcp.<name>`: (target, port).
    async fn srv_lookup(&self, name: &str) -> Option<(String, u16)> {
        let resolver = self.srv.as_ref()?;
        for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let Ok(lookup) = resolver.srv_lookup(format!("{prefix}.{name}.")).await else {
                continue;
            };
            let best = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .min_by_key(|srv| (srv.priority, std::cmp::Reverse(srv.weight)));
            if let Some(srv) = best {
                return Some((srv.target.to_utf8(), srv.port));
            }
        }
        None
    }
}

fn srv_resolver(nameservers: &[String]) -> Option<hickory_resolver::TokioResolver> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    let builder = if nameservers.is_empty() {
        hickory_resolver::TokioResolver::builder_tokio().ok()?
    } else {
        let servers = nameservers
            .iter()
            .filter_map(|s| s.parse::<SocketAddr>().ok())
            .map(|addr| {
                let connection = |mut c: ConnectionConfig| {
                    c.port = addr.port();
                    c
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                )
            })
            .collect();
        hickory_resolver::TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            Default::default(),
        )
    };
    match builder.build() {
        Ok(resolver) => Some(resolver),
        Err(error) => {
            tracing::warn!(%error, "no DNS resolver for SRV records: they are not looked up");
            None
        }
    }
}

/// The resolver outbound requests connect through: a destination's host
/// is resolved as its SRV target when it has one, and only addresses the
/// IP ranges allow are returned.
#[derive(Clone)]
pub(crate) struct AllowedAddresses {
    pub(crate) ranges: IpRanges,
    /// host → SRV target, filled as destinations are discovered.
    pub(crate) targets: Arc<Mutex<HashMap<String, String>>>,
}

impl reqwest::dns::Resolve for AllowedAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let target = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
            .cloned()
            .unwrap_or_else(|| host.clone());
        let ranges = self.ranges.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.as_str(), 0))
                .await?
                .filter(|addr| ranges.allows(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(DiscoveryError::Denied(host))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(host: &str, port: u16, connect_to: Option<&str>, header: &str) -> Destination {
        Destination {
            host: host.into(),
            port,
            connect_to: connect_to.map(str::to_owned),
            host_header: header.into(),
        }
    }

    #[test]
    fn ip_literals_and_explicit_ports_need_no_lookup() {
        assert_eq!(
            plan("1.2.3.4"),
            Some(Plan::Done(done("1.2.3.4", 8448, None, "1.2.3.4")))
        );
        assert_eq!(
            plan("1.2.3.4:99"),
            Some(Plan::Done(done("1.2.3.4", 99, None, "1.2.3.4:99")))
        );
        assert_eq!(
            plan("[::1]:8000"),
            Some(Plan::Done(done("[::1]", 8000, None, "[::1]:8000")))
        );
        assert_eq!(
            plan("[2001:db8::1]"),
            Some(Plan::Done(done(
                "[2001:db8::1]",
                8448,
                None,
                "[2001:db8::1]"
            )))
        );
        assert_eq!(
            plan("example.org:8449"),
            Some(Plan::Done(done(
                "example.org",
                8449,
                None,
                "example.org:8449"
            )))
        );
        assert_eq!(
            plan("example.org"),
            Some(Plan::WellKnown {
                hostname: "example.org".into()
            })
        );
        assert_eq!(plan("example.org:notaport"), None);
        assert_eq!(plan("[not-ipv6]"), None);
    }

    #[test]
    fn well_known_delegation_then_srv_then_8448() {
        // 3.1/3.2: a delegation to an IP literal or an explicit port.
        assert_eq!(
            after_well_known("example.org", Some("matrix.example.org:443")),
            Ok(done(
                "matrix.example.org",
                443,
                None,
                "matrix.example.org:443"
            ))
        );
        assert_eq!(
            after_well_known("example.org", Some("5.6.7.8")),
            Ok(done("5.6.7.8", 8448, None, "5.6.7.8"))
        );
        // 3.3-3.5: SRV of the delegated name decides.
        assert_eq!(
            after_well_known("example.org", Some("matrix.example.org")),
            Err("matrix.example.org".into())
        );
        // 4-6: no (valid) delegation: SRV of the name itself.
        assert_eq!(
            after_well_known("example.org", None),
            Err("example.org".into())
        );
        assert_eq!(
            after_well_known("example.org", Some("bad:port:x")),
            Err("example.org".into())
        );
        assert_eq!(
            after_srv("example.org", Some(("fed.example.net.".into(), 8443))),
            done("example.org", 8443, Some("fed.example.net"), "example.org")
        );
        assert_eq!(
            after_srv("example.org", None),
            done("example.org", 8448, None, "example.org")
        );
    }

    #[test]
    fn deny_list_with_exceptions() {
        let deny: Vec<String> = ganglion_base::config::DEFAULT_IP_RANGE_DENYLIST
            .iter()
            .map(|r| (*r).to_owned())
            .collect();
        let ranges = IpRanges::new(&deny, &[]).expect("ranges");
        for denied in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!ranges.allows(denied.parse().expect("ip")), "{denied}");
        }
        for allowed in ["8.8.8.8", "2606:4700::1111"] {
            assert!(ranges.allows(allowed.parse().expect("ip")), "{allowed}");
        }
        let ranges = IpRanges::new(&deny, &["127.0.0.1/32".to_owned()]).expect("ranges");
        assert!(ranges.allows("127.0.0.1".parse().expect("ip")));
        assert!(!ranges.allows("127.0.0.2".parse().expect("ip")));
        assert!(IpRanges::new(&["nonsense".to_owned()], &[]).is_err());
    }
}
