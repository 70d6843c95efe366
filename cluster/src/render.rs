//! Fills the Envoy templates in `envoy/` for a [`Topology`]. The templates are
//! the one source of truth for Envoy's configuration: the local cluster, the
//! compose harness and `envoy --mode validate` all use what this renders.

use anyhow::{Context, Result};
use minijinja::{context, Environment, UndefinedBehavior};

use crate::topology::{NodeSpec, Role, Topology};

const LOAD_BALANCER: &str = include_str!("../../envoy/load-balancer.yaml.j2");
const PRIMARY: &str = include_str!("../../envoy/primary.yaml.j2");
const REPLICA: &str = include_str!("../../envoy/replica.yaml.j2");

/// One rendered Envoy configuration.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    /// `load-balancer`, `primary`, `replica-1`, ...
    pub name: String,
    pub yaml: String,
}

/// What may differ between renderings of one topology.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions {
    /// Whether the nodes carry the replikv filter. Without it (benchmark
    /// scenario C1) each node is a plain Envoy proxy in front of its kv-backend:
    /// no redirects, no proofs and no replication.
    pub filter: bool,
    /// The primary answers a write only once this many replicas applied it
    /// (the filter's `min_replica_acks`; 0: asynchronous replication).
    pub min_replica_acks: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            filter: true,
            min_replica_acks: 0,
        }
    }
}

/// Renders the configuration of every Envoy in `topology`; `wasm_path` is where
/// the filter's `.wasm` is, as the Envoy processes see it.
pub fn render_all(topology: &Topology, wasm_path: &str) -> Result<Vec<EnvoyConfig>> {
    render_all_with(topology, wasm_path, RenderOptions::default())
}

/// [`render_all`] with [`RenderOptions`].
pub fn render_all_with(
    topology: &Topology,
    wasm_path: &str,
    options: RenderOptions,
) -> Result<Vec<EnvoyConfig>> {
    let env = environment()?;
    let mut configs = vec![EnvoyConfig {
        name: "load-balancer".into(),
        yaml: env.get_template("load-balancer")?.render(context! {
            admin_port => topology.balancer.admin_port,
            listen_address => topology.balancer.listen.address,
            listen_port => topology.balancer.listen.port,
            dns => topology.dns,
            nodes => topology.nodes().map(|n| &n.public).collect::<Vec<_>>(),
            primary => topology.primary.public,
        })?,
    }];
    for node in topology.nodes() {
        configs.push(EnvoyConfig {
            name: node.name.clone(),
            yaml: render_node(&env, topology, node, wasm_path, options)?,
        });
    }
    Ok(configs)
}

fn render_node(
    env: &Environment<'_>,
    topology: &Topology,
    node: &NodeSpec,
    wasm_path: &str,
    options: RenderOptions,
) -> Result<String> {
    let template = match node.role {
        Role::Primary => "primary",
        Role::Replica => "replica",
    };
    let replicas: Vec<_> = topology
        .replicas
        .iter()
        .map(|r| context! { cluster => r.cluster, address => r.public.address, port => r.public.port })
        .collect();
    env.get_template(template)?
        .render(context! {
            admin_port => node.admin_port,
            listen_address => node.listen.address,
            listen_port => node.listen.port,
            dns => topology.dns,
            wasm_path => wasm_path,
            filter => options.filter,
            min_replica_acks => options.min_replica_acks,
            backend => node.backend,
            replicas => replicas,
            primary_url => topology.primary_url,
        })
        .with_context(|| format!("rendering the Envoy config of {}", node.name))
}

fn environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    // A placeholder the code does not fill is a bug, never an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_template("load-balancer", LOAD_BALANCER)?;
    env.add_template("primary", PRIMARY)?;
    env.add_template("replica", REPLICA)?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::PortPlan;

    fn local(replicas: usize) -> Vec<EnvoyConfig> {
        let topology = Topology::local(replicas, PortPlan::Fixed { base: 10000 }).unwrap();
        render_all(&topology, "/x/replikv_filter.wasm").unwrap()
    }

    #[test]
    fn every_envoy_of_the_cluster_gets_a_config() {
        let names: Vec<_> = local(2).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["load-balancer", "primary", "replica-1", "replica-2"]
        );
    }

    #[test]
    fn primary_ships_to_every_replica_cluster() {
        let primary = &local(2)[1].yaml;
        assert!(primary.contains(r#""replicas": ["replica_1", "replica_2"]"#));
        assert!(primary.contains("- name: replica_2"));
        assert!(primary.contains("port_value: 10003"));
    }

    #[test]
    fn replica_acks_are_asked_for_only_when_wanted() {
        let topology = Topology::local(2, PortPlan::Fixed { base: 10000 }).unwrap();
        let asked = RenderOptions {
            min_replica_acks: 2,
            ..RenderOptions::default()
        };
        let primary = &render_all_with(&topology, "/x/f.wasm", asked).unwrap()[1].yaml;
        assert!(primary.contains(r#""min_replica_acks": 2"#), "{primary}");
        assert!(!local(2)[1].yaml.contains("min_replica_acks"));
    }

    #[test]
    fn replica_redirects_to_the_primary_public_url() {
        let replica = &local(1)[2].yaml;
        assert!(replica.contains(r#""primary_url": "http://127.0.0.1:10001""#));
        assert!(replica.contains("port_value: 18002"));
    }

    #[test]
    fn no_config_carries_the_secret() {
        for config in local(1) {
            assert!(!config.yaml.contains("REPLIKV_SECRET:"), "{}", config.name);
            assert!(!config.yaml.contains("key_values"), "{}", config.name);
        }
    }

    #[test]
    fn without_the_filter_nodes_are_plain_proxies() {
        let topology = Topology::local(1, PortPlan::Fixed { base: 10000 }).unwrap();
        let configs = render_all_with(
            &topology,
            "/x/f.wasm",
            RenderOptions {
                filter: false,
                ..RenderOptions::default()
            },
        )
        .unwrap();
        for config in &configs[1..] {
            assert!(
                !config.yaml.contains("envoy.filters.http.wasm"),
                "{}",
                config.name
            );
            assert!(config
                .yaml
                .contains("http_filters:\n          - name: envoy.filters.http.router"));
            assert!(
                config.yaml.contains("port_value: 18001")
                    || config.yaml.contains("port_value: 18002")
            );
        }
        for config in &local(1)[1..] {
            assert!(
                config.yaml.contains("envoy.filters.http.wasm"),
                "{}",
                config.name
            );
        }
    }

    #[test]
    fn reads_skip_the_filter_and_lose_replication_headers_on_every_node() {
        for config in &local(1)[1..] {
            let yaml = &config.yaml;
            let reads = yaml.matches(r#"regex: "GET|HEAD""#).count();
            assert_eq!(reads, 2, "{}: /replicated/ and / read routes", config.name);
            assert_eq!(
                yaml.matches("disabled: true").count(),
                reads,
                "{}",
                config.name
            );
            assert_eq!(
                yaml.matches("key_matcher: { prefix: x-replication-, ignore_case: true }")
                    .count(),
                reads,
                "{}",
                config.name
            );
            // The status view is the filter's: its route comes before the reads.
            let status = yaml.find("path: /replikv/replication").unwrap();
            assert!(status < yaml.find(r#"regex: "GET|HEAD""#).unwrap());
            assert!(yaml.contains("headers_with_underscores_action: DROP_HEADER"));
        }
    }

    #[test]
    fn compose_configs_find_nodes_by_name() {
        let topology = Topology::compose(2).unwrap();
        let configs = render_all(&topology, "/etc/replikv/replikv_filter.wasm").unwrap();
        assert!(configs[0].yaml.contains("name: envoy.clusters.dns"));
        assert!(configs[0].yaml.contains("address: replica-2"));
        assert!(configs[1].yaml.contains("address: primary-kv"));
    }
}
