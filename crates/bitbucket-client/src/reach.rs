//! Where the client may send a credential, checked on every request (the API, paging links,
//! the OAuth token endpoint) and on every connection:
//!
//! - [`AllowList`]: the servers a credential may go to, as URL prefixes. The operator's list
//!   (`--allowed-servers`, Bitbucket Cloud by default) joined with what the credential's Secret
//!   consents to; the client refuses any other URL before sending anything.
//! - [`RefusedNetworks`]: addresses no request goes to whatever the allow-list says
//!   (link-local and cloud-metadata by default). Checked on the addresses the client actually
//!   connects to — IP literals before the request, host names by the resolver, which returns
//!   only the addresses that pass — so a name that resolves elsewhere next time (DNS
//!   rebinding) cannot get around it.
//!
//! Pure except [`Guarded`], the resolver, which does DNS I/O.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use futures::future::BoxFuture;
use ipnet::IpNet;
use url::{Host, Url};

/// What `cloud` stands for in an allow-list: Bitbucket Cloud's API and its OAuth token
/// endpoint.
pub const CLOUD_SERVERS: [&str; 2] = [
    "https://api.bitbucket.org/2.0",
    "https://bitbucket.org/site/oauth2/access_token",
];

/// One allowed server: an `http(s)` URL prefix. `https://bitbucket.example.com` allows every
/// path of that scheme, host and port; `https://example.com/bitbucket` only the paths under
/// `/bitbucket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPrefix {
    scheme: String,
    host: String,
    port: u16,
    path: Vec<String>,
}

impl ServerPrefix {
    /// Whether `url` is this server (same scheme, host and port) under this path.
    pub fn permits(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.host_str().map(str::to_ascii_lowercase).as_deref() == Some(self.host.as_str())
            && url.port_or_known_default() == Some(self.port)
            && url
                .path_segments()
                .is_some_and(|segments| segments_start_with(segments, &self.path))
    }
}

fn segments_start_with<'a>(segments: impl Iterator<Item = &'a str>, prefix: &[String]) -> bool {
    let segments: Vec<&str> = segments.filter(|s| !s.is_empty()).collect();
    segments.len() >= prefix.len() && segments.iter().zip(prefix).all(|(s, p)| s == p)
}

impl FromStr for ServerPrefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "{text:?}: only http and https servers can be allowed"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text:?}: an allowed server carries no user name"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{text:?}: an allowed server has no query or fragment"
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{text:?} names no host"))?;
        let segments = url.path_segments().into_iter().flatten();
        if segments.clone().any(|s| s == "." || s == "..") {
            return Err(format!("{text:?}: the path may not hold . or .."));
        }
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host: host.to_ascii_lowercase(),
            port: url.port_or_known_default().unwrap_or_default(),
            path: segments
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

impl fmt::Display for ServerPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = match self.scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        write!(f, "{}://{}", self.scheme, self.host)?;
        if self.port != default {
            write!(f, ":{}", self.port)?;
        }
        for segment in &self.path {
            write!(f, "/{segment}")?;
        }
        Ok(())
    }
}

/// The servers a credential may be sent to. Written as URL prefixes separated by commas or
/// white space; the word `cloud` stands for [`CLOUD_SERVERS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<ServerPrefix>);

impl AllowList {
    /// Bitbucket Cloud only: the operator's default.
    pub fn cloud() -> Self {
        Self::from_str("cloud").expect("the Cloud servers are valid prefixes")
    }

    /// Whether any entry permits `url`.
    pub fn permits(&self, url: &Url) -> bool {
        self.0.iter().any(|prefix| prefix.permits(url))
    }

    /// The servers either list allows.
    pub fn and(&self, other: &Self) -> Self {
        let mut joined = self.0.clone();
        joined.extend(other.0.iter().filter(|p| !self.0.contains(p)).cloned());
        Self(joined)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for AllowList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        for entry in text.split([',', ' ', '\n', '\t']).filter(|e| !e.is_empty()) {
            if entry == "cloud" {
                for server in CLOUD_SERVERS {
                    prefixes.push(server.parse()?);
                }
            } else {
                prefixes.push(entry.parse()?);
            }
        }
        Ok(Self(prefixes))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let cloud = AllowList::cloud();
        let (is_cloud, rest): (Vec<_>, Vec<_>) = self.0.iter().partition(|p| cloud.0.contains(p));
        let mut entries: Vec<String> = Vec::new();
        if is_cloud.len() == cloud.0.len() {
            entries.push("cloud".into());
        } else {
            entries.extend(is_cloud.iter().map(ToString::to_string));
        }
        entries.extend(rest.iter().map(ToString::to_string));
        f.write_str(&entries.join(", "))
    }
}

/// Networks the client never connects to, each with what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedNetworks(Vec<IpNet>);

/// What the default networks are, for messages.
const KNOWN: [(&str, &str); 4] = [
    (
        "169.254.0.0/16",
        "a link-local address, where clouds serve instance metadata",
    ),
    ("fe80::/10", "an IPv6 link-local address"),
    (
        "fd00:ec2::254/128",
        "the AWS instance metadata service's IPv6 address",
    ),
    (
        "100.100.100.200/32",
        "the Alibaba Cloud instance metadata address",
    ),
];

/// Loopback and the unspecified addresses (which reach the local host): where the pod's own
/// ports and its sidecars listen.
const LOOPBACK: [&str; 4] = ["127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128"];

impl Default for RefusedNetworks {
    fn default() -> Self {
        Self(
            KNOWN
                .iter()
                .map(|(net, _)| net.parse().expect("the default networks are valid"))
                .collect(),
        )
    }
}

impl RefusedNetworks {
    /// Nothing refused (the client tests' loopback servers need nothing else; the operator
    /// always has a list).
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// These networks and loopback: for a client whose server only a Secret's consent allows,
    /// so that a consented name that resolves to loopback is refused where it connects.
    pub fn and_loopback(&self) -> Self {
        let mut nets = self.0.clone();
        nets.extend(
            LOOPBACK
                .iter()
                .map(|net| net.parse::<IpNet>().expect("valid networks")),
        );
        Self(nets)
    }

    /// Why `address` is refused, or `None` when it is not. An IPv4 address inside an IPv6 one
    /// is checked as itself too ([`embedded_ipv4`]): `::ffff:169.254.169.254`, the NAT64
    /// `64:ff9b::a9fe:a9fe`, the 6to4 `2002:a9fe:a9fe::` reach the same host.
    pub fn refuses(&self, address: IpAddr) -> Option<String> {
        let address = address.to_canonical();
        let embedded = match address {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let net = self
            .0
            .iter()
            .find(|net| net.contains(&address) || embedded.is_some_and(|v4| net.contains(&v4)))?;
        let known = KNOWN
            .iter()
            .find(|(text, _)| text.parse::<IpNet>().ok().as_ref() == Some(net));
        Some(match known {
            Some((_, what)) => (*what).to_owned(),
            None if LOOPBACK
                .iter()
                .any(|l| l.parse::<IpNet>().ok().as_ref() == Some(net)) =>
            {
                "a loopback address, the operator's own pod, which a Secret's consent alone \
                 cannot name"
                    .to_owned()
            }
            None => format!("in {net}, a network the operator refuses"),
        })
    }
}

/// Why `url` names a server inside the operator's own pod or cluster, or `None`: a loopback or
/// unspecified address in any spelling (the URL parser canonicalises decimal, octal and hex
/// IPv4; an IPv4 address inside an IPv6 one counts as itself), `localhost`, a cluster DNS name
/// (`.svc`, `.cluster.local`) or a single-label name (which the pod's DNS search list resolves
/// inside the cluster). Only the operator's own allow-list may send a credential there.
pub fn internal(url: &Url) -> Option<&'static str> {
    let local = |ip: IpAddr| {
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => embedded_ipv4(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback()
            || ip.is_unspecified()
            || matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0)
    };
    match url.host()? {
        Host::Ipv4(v4) => local(IpAddr::V4(v4)).then_some("a loopback address"),
        Host::Ipv6(v6) => local(IpAddr::V6(v6)).then_some("a loopback address"),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Some("a loopback address")
            } else if [".svc", ".cluster.local"].iter().any(|s| name.ends_with(s))
                || !name.contains('.')
            {
                Some("a cluster-internal name")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address an IPv6 address carries, where a translator or tunnel would deliver it:
/// IPv4-mapped (`::ffff:0:0/96`), NAT64 (`64:ff9b::/96`, RFC 6052, and the local-use
/// `64:ff9b:1::/48`, RFC 8215, with the address in the last 32 bits), IPv4-compatible
/// (`::/96`, deprecated, but not `::` or `::1`), and 6to4 (`2002::/16`, RFC 3056).
pub fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = address.segments();
    let last = || Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, ..] => Some(last()),
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(last()),
        [0x2002, high, low, ..] => Some(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))),
        _ => None,
    }
}

impl FromStr for RefusedNetworks {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.split([',', ' ', '\n', '\t'])
            .filter(|e| !e.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|e| format!("{entry:?} is not a network (CIDR) or address: {e}"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for RefusedNetworks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&nets.join(","))
    }
}

/// A connection the client would not make: `host` resolved (or is) only `address`, which a
/// refused network holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct AddressRefused {
    pub host: String,
    pub address: IpAddr,
    pub why: String,
}

impl AddressRefused {
    fn describe(&self) -> String {
        let address = self.address.to_string();
        if self.host.trim_matches(['[', ']']) == address {
            format!("{address} is {}", self.why)
        } else {
            format!("{} is {address}, {}", self.host, self.why)
        }
    }
}

/// A URL as messages about reach show it: without its query.
pub fn without_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

/// The address `url` names literally, when it is refused. (Host names go through [`Guarded`];
/// the HTTP stack connects to a literal address without asking a resolver.)
pub fn literal_refused(url: &Url, refused: &RefusedNetworks) -> Option<AddressRefused> {
    let address = match url.host()? {
        Host::Ipv4(v4) => IpAddr::V4(v4),
        Host::Ipv6(v6) => IpAddr::V6(v6),
        Host::Domain(_) => return None,
    };
    refused.refuses(address).map(|why| AddressRefused {
        host: url.host_str().unwrap_or_default().to_owned(),
        address,
        why,
    })
}

/// Looks a host name up: the system's resolver in production.
pub type Lookup =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> + Send + Sync>;

/// The system resolver (`getaddrinfo`, through tokio).
pub fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(found.map(|a| a.ip()).collect())
        })
    })
}

/// The HTTP client's resolver: looks the name up and keeps only the addresses no refused
/// network holds; when none is left, fails with [`AddressRefused`].
pub struct Guarded {
    pub refused: Arc<RefusedNetworks>,
    pub lookup: Lookup,
}

impl Guarded {
    /// The addresses the client may connect to for `host`.
    pub async fn addresses(&self, host: String) -> Result<Vec<IpAddr>, BoxError> {
        let found = (self.lookup)(host.clone()).await?;
        let mut first_refused = None;
        let kept: Vec<IpAddr> = found
            .into_iter()
            .filter(|&address| match self.refused.refuses(address) {
                Some(why) => {
                    first_refused.get_or_insert(AddressRefused {
                        host: host.clone(),
                        address,
                        why,
                    });
                    false
                }
                None => true,
            })
            .collect();
        match (kept.is_empty(), first_refused) {
            (true, Some(refused)) => Err(Box::new(refused)),
            _ => Ok(kept),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guarded = Self {
            refused: Arc::clone(&self.refused),
            lookup: Arc::clone(&self.lookup),
        };
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let kept = guarded.addresses(host).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(kept.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn loopback_and_cluster_names_are_internal_in_every_spelling() {
        for url in [
            "http://localhost:7990",
            "http://LOCALHOST.:7990",
            "http://bitbucket.localhost",
            "http://127.0.0.1:7990",
            "http://127.1",
            "http://2130706433",
            "http://0x7f.1",
            "http://0177.0.0.1",
            "http://0.0.0.0",
            "http://[::1]:7990",
            "http://[::ffff:127.0.0.1]",
            "http://[::ffff:7f00:1]",
            "http://[64:ff9b::7f00:1]",
            "http://[::]",
            "http://bitbucket.bitbucket.svc",
            "http://bitbucket.bitbucket.svc.cluster.local.",
            "http://bitbucket",
        ] {
            let parsed = Url::parse(url).unwrap();
            assert!(internal(&parsed).is_some(), "{url} is internal");
        }
        for url in [
            "https://bitbucket.example.com",
            "https://api.bitbucket.org/2.0",
            "https://10.0.0.5:7990",
            "https://[2001:db8::1]",
        ] {
            let parsed = Url::parse(url).unwrap();
            assert_eq!(internal(&parsed), None, "{url} is not internal");
        }
    }

    #[test]
    fn with_loopback_a_consented_client_refuses_its_own_pod() {
        let refused = RefusedNetworks::default().and_loopback();
        for address in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            let why = refused.refuses(address.parse().unwrap());
            assert!(why.is_some_and(|w| w.contains("loopback")), "{address}");
        }
        assert_eq!(
            RefusedNetworks::default().refuses("127.0.0.1".parse().unwrap()),
            None
        );
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn a_prefix_allows_its_origin_and_the_paths_under_it_only() {
        let list: AllowList = "https://bitbucket.example.com, http://127.0.0.1:7990/bitbucket"
            .parse()
            .unwrap();
        for allowed in [
            "https://bitbucket.example.com/rest/api/1.0/projects",
            "https://BITBUCKET.example.com:443/",
            "http://127.0.0.1:7990/bitbucket/rest/api/1.0/users",
        ] {
            assert!(list.permits(&url(allowed)), "{allowed}");
        }
        for refused in [
            "http://bitbucket.example.com/rest",
            "https://bitbucket.example.com:8443/rest",
            "https://bitbucket.example.com.evil.test/rest",
            "https://evil.test/bitbucket.example.com",
            "http://127.0.0.1:7990/bitbucket-other/rest",
            "http://127.0.0.1:7990/rest",
            "http://127.0.0.1:7991/bitbucket/rest",
        ] {
            assert!(!list.permits(&url(refused)), "{refused}");
        }
    }

    #[test]
    fn cloud_means_the_api_and_the_oauth_token_endpoint_and_nothing_else() {
        let cloud = AllowList::cloud();
        assert!(cloud.permits(&url("https://api.bitbucket.org/2.0/user")));
        assert!(cloud.permits(&url("https://bitbucket.org/site/oauth2/access_token")));
        assert!(!cloud.permits(&url("https://bitbucket.org/jdoe/repo")));
        assert!(!cloud.permits(&url("https://api.bitbucket.org/1.0/user")));
        assert_eq!(cloud.to_string(), "cloud");
        let joined = cloud.and(&"http://127.0.0.1:7990".parse().unwrap());
        assert_eq!(joined.to_string(), "cloud, http://127.0.0.1:7990");
        assert_eq!(AllowList::default().to_string(), "none");
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for (entry, says) in [
            ("ftp://example.com", "only http and https"),
            ("https://user@example.com", "no user name"),
            ("https://example.com/?q=1", "no query"),
            ("example.com", "not a URL"),
        ] {
            let error = entry.parse::<AllowList>().unwrap_err();
            assert!(error.contains(says), "{entry}: {error}");
        }
    }

    #[test]
    fn metadata_and_link_local_addresses_are_refused_in_every_spelling() {
        let refused = RefusedNetworks::default();
        for address in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "64:ff9b::a9fe:a9fe",       // NAT64 of 169.254.169.254
            "64:ff9b::169.254.169.254", // the same, written with the IPv4 part
            "64:ff9b:1::a9fe:a9fe",     // NAT64, local-use prefix
            "2002:a9fe:a9fe::1",        // 6to4
            "::169.254.169.254",        // IPv4-compatible (deprecated)
            "64:ff9b::6464:64c8",       // NAT64 of 100.100.100.200
        ] {
            assert!(
                refused.refuses(address.parse().unwrap()).is_some(),
                "{address}"
            );
        }
        for address in ["127.0.0.1", "10.0.0.1", "140.82.112.3", "::1"] {
            assert!(
                refused.refuses(address.parse().unwrap()).is_none(),
                "{address}"
            );
        }
        assert_eq!(
            refused.refuses("169.254.169.254".parse().unwrap()).unwrap(),
            "a link-local address, where clouds serve instance metadata"
        );
        let custom: RefusedNetworks = "10.96.0.0/12, 192.168.1.7".parse().unwrap();
        assert_eq!(
            custom.refuses("10.96.0.10".parse().unwrap()).unwrap(),
            "in 10.96.0.0/12, a network the operator refuses"
        );
        assert!(custom.refuses("192.168.1.7".parse().unwrap()).is_some());
    }

    /// A URL may spell an IPv4 address in decimal, octal or hex, with a trailing dot or in
    /// brackets as IPv6: the URL parser (WHATWG's) makes each the address, which is refused.
    #[test]
    fn a_metadata_address_is_refused_however_the_url_spells_it() {
        let refused = RefusedNetworks::default();
        for spelling in [
            "http://169.254.169.254/",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://169.254.169.254./",
            "http://169.254.43518/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::]/",
            "http://[fd00:ec2::254]/",
        ] {
            assert!(
                literal_refused(&url(spelling), &refused).is_some(),
                "{spelling} was not refused"
            );
        }
        assert!(literal_refused(&url("http://[::1]/"), &refused).is_none());
        assert!(literal_refused(&url("http://[64:ff9b::8c52:7003]/"), &refused).is_none());
    }

    #[test]
    fn a_literal_address_is_checked_before_any_lookup() {
        let refused = RefusedNetworks::default();
        let found = literal_refused(&url("http://169.254.169.254/latest/meta-data"), &refused);
        assert_eq!(
            found.unwrap().to_string(),
            "169.254.169.254 is a link-local address, where clouds serve instance metadata"
        );
        assert!(literal_refused(&url("http://[fe80::1]:7990/"), &refused).is_some());
        // The same address spelled as one number is the same address.
        assert!(literal_refused(&url("https://2852039166/2.0"), &refused).is_some());
        assert!(literal_refused(&url("http://metadata.example/"), &refused).is_none());
    }

    /// A name that answers a public address first and the metadata address next (DNS
    /// rebinding): each lookup is checked, so the second is refused.
    #[tokio::test]
    async fn a_name_that_rebinds_to_a_refused_address_is_refused_when_it_does() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let guarded = Guarded {
            refused: Arc::new(RefusedNetworks::default()),
            lookup: Arc::new(move |_host| {
                let call = counted.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    Ok(vec![if call == 0 {
                        "140.82.112.3".parse().unwrap()
                    } else {
                        "169.254.169.254".parse().unwrap()
                    }])
                })
            }),
        };
        let first = guarded.addresses("rebind.example".into()).await.unwrap();
        assert_eq!(first, ["140.82.112.3".parse::<IpAddr>().unwrap()]);
        let second = guarded
            .addresses("rebind.example".into())
            .await
            .unwrap_err();
        let refused = second.downcast_ref::<AddressRefused>().unwrap();
        assert_eq!(
            refused.address,
            "169.254.169.254".parse::<IpAddr>().unwrap()
        );
        assert_eq!(refused.host, "rebind.example");
    }

    #[tokio::test]
    async fn of_mixed_answers_only_the_allowed_addresses_are_kept() {
        let guarded = Guarded {
            refused: Arc::new(RefusedNetworks::default()),
            lookup: Arc::new(|_host| {
                Box::pin(async {
                    Ok(vec![
                        "169.254.169.254".parse().unwrap(),
                        "10.1.2.3".parse().unwrap(),
                    ])
                })
            }),
        };
        let kept = guarded.addresses("mixed.example".into()).await.unwrap();
        assert_eq!(kept, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
    }
}
