//! Who listens where. A [`Topology`] names every Envoy and kv-backend of a
//! cluster and gives each its addresses, for the local cluster (127.0.0.1,
//! fixed or free ports) and for compose (DNS names on a private network).

use std::net::TcpListener;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Replica,
}

/// A host and port, as Envoy's `socket_address` wants them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
}

impl Endpoint {
    pub fn new(address: impl Into<String>, port: u16) -> Self {
        Self {
            address: address.into(),
            port,
        }
    }

    /// `http://address:port`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.address, self.port)
    }
}

/// One node: a public Envoy with the filter, and its own kv-backend.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSpec {
    /// `primary`, `replica-1`, `replica-2`, ...: log files and data dirs use it.
    pub name: String,
    pub role: Role,
    /// The Envoy cluster name other Envoys use for this node (`replica_1`).
    pub cluster: String,
    /// Where this node's Envoy listens.
    pub listen: Endpoint,
    /// How other Envoys and clients reach that listener.
    pub public: Endpoint,
    pub admin_port: u16,
    /// Where the kv-backend listens; only this node's Envoy talks to it.
    pub backend: Endpoint,
}

/// The load balancer's own addresses.
#[derive(Debug, Clone, Serialize)]
pub struct BalancerSpec {
    pub listen: Endpoint,
    pub public: Endpoint,
    pub admin_port: u16,
}

/// Every process of a cluster and how they reach each other.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub balancer: BalancerSpec,
    pub primary: NodeSpec,
    pub replicas: Vec<NodeSpec>,
    /// What a replica puts in front of the path in a 307's `Location`.
    pub primary_url: String,
    /// Whether Envoys find each other by DNS name (compose, Consul) rather
    /// than by fixed IP address.
    pub dns: bool,
}

/// How the local cluster picks its ports.
#[derive(Debug, Clone, Copy)]
pub enum PortPlan {
    /// The load balancer on `base`, the primary on `base + 1`, replica *i* on
    /// `base + 1 + i`; Envoy admin ports are 9000 higher and kv-backends 8000
    /// higher (10000 → 19000 and 18001, ...).
    Fixed { base: u16 },
    /// Free ports, so that tests can run side by side.
    Ephemeral,
}

impl Topology {
    /// A cluster on 127.0.0.1 with `replicas` replica nodes.
    pub fn local(replicas: usize, ports: PortPlan) -> Result<Self> {
        if replicas == 0 {
            bail!("a cluster needs at least one replica");
        }
        let count = replicas + 2;
        let (public, admin, backend): (Vec<u16>, Vec<u16>, Vec<u16>) = match ports {
            PortPlan::Fixed { base } => {
                let offset = |i: usize, extra: u16| -> Result<u16> {
                    u16::try_from(i)
                        .ok()
                        .and_then(|i| base.checked_add(extra)?.checked_add(i))
                        .context("port numbers run past 65535: choose a lower base port")
                };
                (
                    (0..count).map(|i| offset(i, 0)).collect::<Result<_>>()?,
                    (0..count).map(|i| offset(i, 9000)).collect::<Result<_>>()?,
                    (0..count).map(|i| offset(i, 8000)).collect::<Result<_>>()?,
                )
            }
            PortPlan::Ephemeral => {
                let mut free = free_ports(3 * count)?.into_iter();
                let mut take = || free.by_ref().take(count).collect::<Vec<_>>();
                (take(), take(), take())
            }
        };
        let local = |port: u16| Endpoint::new("127.0.0.1", port);
        let node = |i: usize, role: Role, name: String, cluster: String| NodeSpec {
            name,
            role,
            cluster,
            listen: local(public[i]),
            public: local(public[i]),
            admin_port: admin[i],
            backend: local(backend[i]),
        };
        let primary = node(1, Role::Primary, "primary".into(), "primary".into());
        let replicas = (1..=replicas)
            .map(|r| {
                node(
                    r + 1,
                    Role::Replica,
                    format!("replica-{r}"),
                    format!("replica_{r}"),
                )
            })
            .collect();
        Ok(Self {
            balancer: BalancerSpec {
                listen: local(public[0]),
                public: local(public[0]),
                admin_port: admin[0],
            },
            primary_url: primary.public.url(),
            primary,
            replicas,
            dns: false,
        })
    }

    /// The same cluster as containers on one private network, each found by its
    /// service name: `lb`, `primary`, `replica-1`, ... with kv-backends named
    /// `primary-kv`, `replica-1-kv`, ...
    pub fn compose(replicas: usize) -> Result<Self> {
        if replicas == 0 {
            bail!("a cluster needs at least one replica");
        }
        let node = |role: Role, name: String, cluster: String| NodeSpec {
            listen: Endpoint::new("0.0.0.0", 10000),
            public: Endpoint::new(name.clone(), 10000),
            backend: Endpoint::new(format!("{name}-kv"), 8080),
            admin_port: 9901,
            name,
            role,
            cluster,
        };
        let primary = node(Role::Primary, "primary".into(), "primary".into());
        Ok(Self {
            balancer: BalancerSpec {
                listen: Endpoint::new("0.0.0.0", 10000),
                public: Endpoint::new("lb", 10000),
                admin_port: 9901,
            },
            primary_url: primary.public.url(),
            primary,
            replicas: (1..=replicas)
                .map(|r| {
                    node(
                        Role::Replica,
                        format!("replica-{r}"),
                        format!("replica_{r}"),
                    )
                })
                .collect(),
            dns: true,
        })
    }

    /// Fails with a clear message when a port this cluster listens on (on
    /// 127.0.0.1) is already taken, before anything is started.
    pub fn check_ports_free(&self) -> Result<()> {
        let mut ports = vec![
            ("load balancer", self.balancer.listen.port),
            ("load balancer admin", self.balancer.admin_port),
        ];
        for node in self.nodes() {
            ports.extend([
                (node.name.as_str(), node.listen.port),
                (node.name.as_str(), node.admin_port),
                (node.name.as_str(), node.backend.port),
            ]);
        }
        for (owner, port) in ports {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port {port} ({owner}) is already in use on 127.0.0.1: is another \
                     cluster running? Choose other ports with --base-port"
                );
            }
        }
        Ok(())
    }

    /// The primary first, then the replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeSpec> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }
}

/// Where [`free_ports`] looks: below Linux's default ephemeral range
/// (32768-60999), from which the kernel picks the source ports of outgoing
/// connections. A port chosen from that range can be taken by one of the
/// cluster's own connections between choosing it and binding it.
const FREE_PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// Finds `count` distinct ports on 127.0.0.1 that are free now, starting at a
/// random point of [`FREE_PORT_RANGE`] so that clusters started side by side
/// (tests in several processes) rarely try the same ones. Within one process,
/// a counter keeps every call on ports no earlier call handed out.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);

    let span = usize::from(FREE_PORT_RANGE.end - FREE_PORT_RANGE.start);
    if NEXT.load(Ordering::Relaxed) == usize::MAX {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let start = usize::try_from(u64::from_le_bytes(seed) % span as u64).unwrap_or(0);
        let _ = NEXT.compare_exchange(usize::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut ports = Vec::with_capacity(count);
    for _ in 0..span {
        if ports.len() == count {
            break;
        }
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = FREE_PORT_RANGE.start + u16::try_from(offset).unwrap_or(0);
        // Free means bindable now, and not in TIME_WAIT use by anything else.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    if ports.len() < count {
        bail!("fewer than {count} free ports in {FREE_PORT_RANGE:?} on 127.0.0.1");
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_follow_the_readme() {
        let t = Topology::local(2, PortPlan::Fixed { base: 10000 }).unwrap();
        assert_eq!(t.balancer.listen.port, 10000);
        assert_eq!(t.balancer.admin_port, 19000);
        assert_eq!(t.primary.listen.port, 10001);
        assert_eq!(t.primary.backend.port, 18001);
        assert_eq!(t.replicas[0].listen.port, 10002);
        assert_eq!(t.replicas[1].listen.port, 10003);
        assert_eq!(t.replicas[1].cluster, "replica_2");
        assert_eq!(t.primary_url, "http://127.0.0.1:10001");
    }

    #[test]
    fn ephemeral_ports_are_all_distinct() {
        let t = Topology::local(3, PortPlan::Ephemeral).unwrap();
        let mut ports: Vec<u16> = vec![t.balancer.listen.port, t.balancer.admin_port];
        for n in t.nodes() {
            ports.extend([n.listen.port, n.admin_port, n.backend.port]);
        }
        let count = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), count);
    }

    #[test]
    fn a_base_port_too_high_is_refused() {
        assert!(Topology::local(1, PortPlan::Fixed { base: 60000 }).is_err());
    }

    #[test]
    fn a_taken_port_is_reported_before_starting() {
        let t = Topology::local(1, PortPlan::Ephemeral).unwrap();
        assert!(t.check_ports_free().is_ok());
        let _taken = TcpListener::bind(("127.0.0.1", t.replicas[0].listen.port)).unwrap();
        let error = t.check_ports_free().unwrap_err().to_string();
        assert!(error.contains("replica-1"), "{error}");
    }

    #[test]
    fn a_cluster_without_replicas_is_refused() {
        assert!(Topology::local(0, PortPlan::Ephemeral).is_err());
    }
}
