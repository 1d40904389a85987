//! Server discovery: where to send a request for a server name, as the
//! server-server API's resolution steps say: an IP literal, an explicit
//! port, `/.well-known/matrix/server` delegation, SRV records
//! (`_matrix-fed._tcp`, then the deprecated `_matrix._tcp`), else port
//! 8448. Every address connected to passes the IP deny list.
//!
//! The steps are plain functions over what was looked up ([`plan`],
//! [`after_well_known`], [`after_srv`]), so they are tested without a
//! network; [`Discovery`] does the lookups and caches the answers (tested
//! on loopback against TLS well-known hosts and a DNS server).

use ganglion_base::bounded::Bounded;
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
pub struct IpRanges {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

/// A configured range that is not CIDR.
#[derive(Debug, thiserror::Error)]
#[error("not an IP range (CIDR): {0}")]
pub struct BadRange(String);

impl IpRanges {
    pub fn new(deny: &[String], allow: &[String]) -> Result<IpRanges, BadRange> {
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

    pub fn allows(&self, ip: IpAddr) -> bool {
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
pub enum DiscoveryError {
    #[error("not a server name: {0}")]
    BadName(String),
    #[error("{0} resolves to no address federation may connect to")]
    Denied(String),
}

/// The largest well-known file read (it holds one short name).
const MAX_WELL_KNOWN_BYTES: usize = 64 * 1024;

/// Redirects of a well-known fetch: at most five, over HTTPS, and never to
/// an IP literal the ranges deny (a named host is checked by the resolver
/// when connected to, as the first was).
pub fn checked_redirects(ranges: IpRanges) -> reqwest::redirect::Policy {
    checked_redirects_for(ranges, &["https"])
}

/// Redirects at most five, to URLs of these `schemes` only, and never to
/// an IP literal the ranges deny (a named host is checked by the resolver
/// when connected to, as the first was).
pub fn checked_redirects_for(
    ranges: IpRanges,
    schemes: &'static [&'static str],
) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects");
        }
        let url = attempt.url();
        if !schemes.contains(&url.scheme()) {
            return attempt.error("redirected to another scheme");
        }
        let literal = url.host_str().and_then(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        if literal.is_some_and(|ip| !ranges.allows(ip)) {
            let denied = DiscoveryError::Denied(url.to_string());
            return attempt.error(denied);
        }
        attempt.follow()
    })
}

/// How long a discovered destination is used before it is looked up again.
const CACHE_FOR: Duration = Duration::from_secs(3600);

/// Looks destinations up and keeps them for a while.
pub(crate) struct Discovery {
    ranges: IpRanges,
    /// Fetches well-known files (connects only where `ranges` allow).
    well_known_client: reqwest::Client,
    srv: Option<hickory_resolver::TokioResolver>,
    cache: Mutex<Bounded<String, (Destination, Instant)>>,
}

impl Discovery {
    pub(crate) fn new(
        ranges: IpRanges,
        well_known_client: reqwest::Client,
        nameservers: &[String],
        cache_size: usize,
    ) -> Discovery {
        Discovery {
            ranges,
            well_known_client,
            srv: srv_resolver(nameservers),
            cache: Mutex::new(Bounded::new(cache_size)),
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
            return Ok(destination);
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
        let bytes = crate::read_capped(response, MAX_WELL_KNOWN_BYTES)
            .await
            .ok()?;
        delegation_of(&bytes)
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

/// The server name a well-known answer delegates to: its `m.server`, if
/// the answer is a JSON object and that is a valid server name.
pub(crate) fn delegation_of(answer: &[u8]) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(answer).ok()?;
    let delegated = body.get("m.server")?.as_str()?;
    ruma::ServerName::parse(delegated).ok()?;
    Some(delegated.to_owned())
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
    pub(crate) targets: Arc<Mutex<Bounded<String, String>>>,
}

impl reqwest::dns::Resolve for AllowedAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let target = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
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
    use std::collections::HashMap;

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

    /// A DNS server on loopback UDP answering SRV queries from `records`
    /// (name with its trailing dot → (priority, weight, port, target)),
    /// NXDOMAIN for any other name: its address.
    async fn dns_server(records: HashMap<String, Vec<(u16, u16, u16, String)>>) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS");
        let address = socket.local_addr().expect("DNS address");
        tokio::spawn(async move {
            let mut buf = [0_u8; 1500];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(answer) = dns_answer(&buf[..len], &records) {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        address
    }

    /// The answer to one DNS query (RFC 1035 wire format).
    fn dns_answer(
        query: &[u8],
        records: &HashMap<String, Vec<(u16, u16, u16, String)>>,
    ) -> Option<Vec<u8>> {
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*query.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
            at += len;
        }
        let question_end = at + 4;
        let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
        let name = format!("{}.", labels.join("."));
        let found = records.get(&name).filter(|_| qtype == 33);
        let mut answer = Vec::new();
        answer.extend_from_slice(&query[..2]);
        // A response, authoritative, recursion desired and available;
        // NXDOMAIN when the name has no records.
        let rd = query[2] & 1;
        answer.extend_from_slice(&[0x84 | rd, if found.is_some() { 0x80 } else { 0x83 }]);
        let count = found.map_or(0, Vec::len) as u16;
        for n in [1_u16, count, 0, 0] {
            answer.extend_from_slice(&n.to_be_bytes());
        }
        answer.extend_from_slice(query.get(12..question_end)?);
        for (priority, weight, port, target) in found.into_iter().flatten() {
            let mut target_name = Vec::new();
            for label in target.trim_end_matches('.').split('.') {
                target_name.push(label.len() as u8);
                target_name.extend_from_slice(label.as_bytes());
            }
            target_name.push(0);
            answer.extend_from_slice(&[0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
            answer.extend_from_slice(&(6 + target_name.len() as u16).to_be_bytes());
            for n in [*priority, *weight, *port] {
                answer.extend_from_slice(&n.to_be_bytes());
            }
            answer.extend_from_slice(&target_name);
        }
        Some(answer)
    }

    /// An HTTPS server on loopback (a self-signed certificate for `host`)
    /// serving `/.well-known/matrix/server` as `body`: its address.
    async fn well_known_server(dir: &std::path::Path, host: &str, body: &str) -> SocketAddr {
        let body = body.to_owned();
        let router = axum::Router::new().route(
            "/.well-known/matrix/server",
            axum::routing::get(move || {
                let body = body.clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        https_server(dir, host, router).await
    }

    async fn https_server(dir: &std::path::Path, host: &str, router: axum::Router) -> SocketAddr {
        let certified =
            rcgen::generate_simple_self_signed(vec![host.to_owned()]).expect("certificate");
        let (cert, key) = (
            dir.join(format!("{host}.crt")),
            dir.join(format!("{host}.key")),
        );
        std::fs::write(&cert, certified.cert.pem()).expect("write certificate");
        std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind HTTPS");
        let address = listener.local_addr().expect("HTTPS address");
        tokio::spawn(async move {
            let _ = ganglion_base::http::serve_tls(
                listener,
                router,
                &cert,
                &key,
                ganglion_base::http::ListenerLimits::INTERNAL,
                std::future::pending(),
            )
            .await;
        });
        address
    }

    /// A well-known file's redirect to an address the deny list holds is
    /// not followed (the resolver never sees an IP literal); one to an
    /// allowed address is. A file longer than allowed is not read whole,
    /// whether it says its length or not.
    #[tokio::test]
    async fn well_known_redirects_are_checked_and_bodies_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = well_known_server(
            dir.path(),
            "127.0.0.1",
            r#"{"m.server": "target.test:8448"}"#,
        )
        .await;
        let location = format!(
            "https://127.0.0.1:{}/.well-known/matrix/server",
            target.port()
        );
        let redirector = https_server(
            dir.path(),
            "redirect.test",
            axum::Router::new().route(
                "/.well-known/matrix/server",
                axum::routing::get(move || {
                    let location = location.clone();
                    async move { (axum::http::StatusCode::FOUND, [("location", location)]) }
                }),
            ),
        )
        .await;
        let huge = format!(
            r#"{{"m.server": "big.test", "pad": "{}"}}"#,
            "x".repeat(100_000)
        );
        let sized = well_known_server(dir.path(), "sized.test", &huge).await;
        let streamed = https_server(
            dir.path(),
            "streamed.test",
            axum::Router::new().route(
                "/.well-known/matrix/server",
                axum::routing::get(move || {
                    let huge = huge.clone();
                    async move {
                        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = huge
                            .into_bytes()
                            .chunks(1000)
                            .map(|c| Ok(c.to_vec()))
                            .collect();
                        axum::body::Body::from_stream(futures::stream::iter(chunks))
                    }
                }),
            ),
        )
        .await;
        let discovery = |deny: &[&str]| {
            let deny: Vec<String> = deny.iter().map(|d| (*d).to_owned()).collect();
            let ranges = IpRanges::new(&deny, &[]).expect("ranges");
            let client = reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .redirect(checked_redirects(ranges.clone()))
                .resolve("redirect.test", redirector)
                .resolve("sized.test", sized)
                .resolve("streamed.test", streamed)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            Discovery::new(ranges, client, &[], 100)
        };
        let denying = discovery(&["127.0.0.0/8"]);
        assert_eq!(denying.well_known("redirect.test").await, None);
        let allowing = discovery(&[]);
        assert_eq!(
            allowing.well_known("redirect.test").await.as_deref(),
            Some("target.test:8448")
        );
        assert_eq!(allowing.well_known("sized.test").await, None);
        assert_eq!(allowing.well_known("streamed.test").await, None);
    }

    /// Discovery over the network: well-known files fetched over TLS from
    /// their hosts, SRV records from a DNS server, in the spec's order.
    #[tokio::test]
    async fn discovery_follows_well_known_files_and_srv_records_over_the_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dns = dns_server(HashMap::from([
            (
                "_matrix-fed._tcp.delegated.test.".to_owned(),
                vec![
                    (20, 0, 9001, "backup.test.".to_owned()),
                    (10, 5, 8443, "fed.delegated.test.".to_owned()),
                ],
            ),
            (
                "_matrix._tcp.legacy.test.".to_owned(),
                vec![(10, 0, 7443, "old.legacy.test.".to_owned())],
            ),
            (
                "_matrix-fed._tcp.own-srv.test.".to_owned(),
                vec![(10, 0, 6443, "fed.own-srv.test.".to_owned())],
            ),
        ]))
        .await;
        let with_port = well_known_server(
            dir.path(),
            "ported.test",
            r#"{"m.server": "matrix.ported.test:8449"}"#,
        )
        .await;
        let to_srv = well_known_server(
            dir.path(),
            "example.test",
            r#"{"m.server": "delegated.test"}"#,
        )
        .await;
        let invalid = well_known_server(dir.path(), "own-srv.test", r#"{"m.server": 7}"#).await;
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .resolve("ported.test", with_port)
            .resolve("example.test", to_srv)
            .resolve("own-srv.test", invalid)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let discovery = Discovery::new(
            IpRanges::new(&[], &[]).expect("ranges"),
            client,
            &[dns.to_string()],
            100,
        );
        let found = |name: &'static str| {
            let discovery = &discovery;
            async move { discovery.destination(name).await.expect(name) }
        };
        // A delegation with a port: used as it is.
        assert_eq!(
            found("ported.test").await,
            done("matrix.ported.test", 8449, None, "matrix.ported.test:8449")
        );
        // A delegation without one: the delegated name's best SRV record.
        assert_eq!(
            found("example.test").await,
            done(
                "delegated.test",
                8443,
                Some("fed.delegated.test"),
                "delegated.test"
            )
        );
        // An invalid well-known file: the name's own SRV record.
        assert_eq!(
            found("own-srv.test").await,
            done(
                "own-srv.test",
                6443,
                Some("fed.own-srv.test"),
                "own-srv.test"
            )
        );
        // No well-known file (no such host): the deprecated SRV name, then
        // port 8448.
        assert_eq!(
            found("legacy.test").await,
            done("legacy.test", 7443, Some("old.legacy.test"), "legacy.test")
        );
        assert_eq!(
            found("nothing.test").await,
            done("nothing.test", 8448, None, "nothing.test")
        );
        // An explicit port needs no lookup at all.
        assert_eq!(
            found("nothing.test:1234").await,
            done("nothing.test", 1234, None, "nothing.test:1234")
        );
    }
}

/// The answers discovery reads from outside (server names, well-known
/// files) never panic it, and what it makes of them obeys the spec's steps.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Server names of every shape the grammar allows.
    fn server_name() -> impl Strategy<Value = String> {
        let host = prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}",
            any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string()),
            any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
        ];
        (host, proptest::option::of(any::<u16>())).prop_map(|(host, port)| match port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        })
    }

    proptest! {
        #[test]
        fn any_name_is_planned_or_refused(name in any::<String>()) {
            if let Some(Plan::Done(destination)) = plan(&name) {
                prop_assert_eq!(destination.host_header, name);
            }
        }

        #[test]
        fn valid_names_follow_steps_one_and_two(name in server_name()) {
            let (host, port) = split_host_port(&name).expect("a valid name splits");
            match plan(&name).expect("a valid name has a plan") {
                Plan::Done(destination) => {
                    prop_assert!(is_ip_literal(&host) || port.is_some());
                    prop_assert_eq!(destination.port, port.unwrap_or(DEFAULT_PORT));
                    prop_assert_eq!(destination.host, host);
                }
                Plan::WellKnown { hostname } => {
                    prop_assert!(!is_ip_literal(&host) && port.is_none());
                    prop_assert_eq!(hostname, name);
                }
            }
        }

        #[test]
        fn any_well_known_answer_is_a_server_name_or_none(answer in any::<Vec<u8>>()) {
            if let Some(delegated) = delegation_of(&answer) {
                prop_assert!(ruma::ServerName::parse(&delegated).is_ok());
            }
        }

        #[test]
        fn a_well_known_object_delegates_to_its_valid_name(
            delegated in prop_oneof![server_name(), any::<String>()],
            extra in any::<String>(),
        ) {
            let answer = serde_json::json!({ "m.server": delegated, "extra": extra });
            let found = delegation_of(answer.to_string().as_bytes());
            let valid = ruma::ServerName::parse(&delegated).is_ok();
            prop_assert_eq!(found.is_some(), valid);
            // Whatever the delegation, the destination is the delegated
            // name's or, failing that, the host's own.
            let hostname = "origin.test";
            match after_well_known(hostname, found.as_deref()) {
                Ok(destination) => prop_assert!(valid && destination.host_header == delegated),
                Err(name) => prop_assert!(name == hostname || (valid && name == delegated)),
            }
        }
    }
}
