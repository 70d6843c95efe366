//! Starts a cluster from a [`Topology`]: every kv-backend, then every node's
//! Envoy, then the load balancer, each waited for until it answers; and stops
//! them all, whether the cluster ends normally, on a signal, or because one
//! process died.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::binaries::Binaries;
use crate::process::Process;
use crate::render::{render_all_with, RenderOptions};
use crate::topology::{NodeSpec, Role, Topology};

/// How long one process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything about a cluster that is not its topology.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Logs, rendered configs and data dirs go under here.
    pub run_dir: PathBuf,
    /// The replication secret every node's Envoy gets in its environment.
    pub secret: String,
    /// Envoy worker threads per Envoy.
    pub concurrency: usize,
    /// `--zone` specs given to every kv-backend (empty: zone `default` only).
    pub zones: Vec<String>,
    /// Extra arguments for every kv-backend.
    pub backend_args: Vec<String>,
    /// Replicas that must have applied a write before the primary answers it
    /// (0: asynchronous replication).
    pub min_replica_acks: usize,
}

impl ClusterOptions {
    pub fn new(run_dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            run_dir: run_dir.into(),
            secret: random_secret()?,
            concurrency: 2,
            zones: Vec::new(),
            backend_args: Vec::new(),
            min_replica_acks: 0,
        })
    }
}

/// One node of a running cluster: its Envoy and its kv-backend.
#[derive(Debug)]
pub struct Node {
    pub spec: NodeSpec,
    pub envoy: Process,
    pub backend: Process,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The node's public URL (its Envoy listener), without a trailing slash.
    pub fn url(&self) -> String {
        self.spec.public.url()
    }

    /// The kv-backend's own URL, for checks that must bypass Envoy.
    pub fn backend_url(&self) -> String {
        self.spec.backend.url()
    }

    /// The Envoy admin URL (`/stats`, `/ready`).
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.admin_port)
    }

    /// Starts the kv-backend again (after a kill) and waits until it answers.
    pub async fn restart_backend(&mut self) -> Result<()> {
        let url = format!("{}/api/", self.backend_url());
        self.backend.spawn()?;
        wait_http_ok(&mut self.backend, &url).await
    }

    /// Starts the Envoy again (after a kill) and waits until it serves.
    pub async fn restart_envoy(&mut self) -> Result<()> {
        let (admin, url) = (self.admin_url(), format!("{}/api/", self.url()));
        self.envoy.spawn()?;
        wait_envoy(&mut self.envoy, &admin, &url).await
    }
}

/// A running cluster. Dropping it kills every process; [`Cluster::stop`] ends
/// them gracefully.
#[derive(Debug)]
pub struct Cluster {
    pub topology: Topology,
    pub options: ClusterOptions,
    pub balancer: Process,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts every process of `topology` and returns once all of them serve.
    /// On any failure, what was started is stopped again.
    pub async fn start(
        topology: Topology,
        binaries: &Binaries,
        options: ClusterOptions,
    ) -> Result<Self> {
        topology.check_ports_free()?;
        let logs = options.run_dir.join("logs");
        let configs_dir = options.run_dir.join("envoy");
        for dir in [&logs, &configs_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let wasm = binaries
            .wasm
            .canonicalize()
            .context("locating the filter's .wasm")?;
        let render = RenderOptions {
            min_replica_acks: options.min_replica_acks,
            ..RenderOptions::default()
        };
        let configs = render_all_with(&topology, &wasm.to_string_lossy(), render)?;
        let mut config_paths = Vec::new();
        for config in &configs {
            let path = configs_dir.join(format!("{}.yaml", config.name));
            std::fs::write(&path, &config.yaml)
                .with_context(|| format!("writing {}", path.display()))?;
            config_paths.push(path);
        }
        let envoy = |name: &str, config: &Path| {
            Process::new(
                format!("{name} envoy"),
                &binaries.envoy,
                logs.join(format!("{name}.envoy.log")),
            )
            .arg("-c")
            .arg(config.to_string_lossy())
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg("info")
            .env("REPLIKV_SECRET", &options.secret)
        };

        let mut nodes = Vec::new();
        for (spec, config) in topology.nodes().zip(&config_paths[1..]) {
            let data_dir = options.run_dir.join("data").join(&spec.name);
            std::fs::create_dir_all(&data_dir)?;
            let mut backend = Process::new(
                format!("{} kv-backend", spec.name),
                &binaries.backend,
                logs.join(format!("{}.kv-backend.log", spec.name)),
            )
            .arg("--listen")
            .arg(format!("{}:{}", spec.backend.address, spec.backend.port))
            .arg("--data-dir")
            .arg(data_dir.to_string_lossy());
            for zone in &options.zones {
                backend = backend.arg("--zone").arg(zone);
            }
            for arg in &options.backend_args {
                backend = backend.arg(arg);
            }
            backend.spawn()?;
            nodes.push(Node {
                spec: spec.clone(),
                envoy: envoy(&spec.name, config),
                backend,
            });
        }
        let mut cluster = Self {
            balancer: envoy("load-balancer", &config_paths[0]),
            topology,
            options,
            nodes,
        };
        cluster.wait_until_serving().await?;
        Ok(cluster)
    }

    async fn wait_until_serving(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            let url = format!("{}/api/", node.backend_url());
            wait_http_ok(&mut node.backend, &url).await?;
        }
        for node in &mut self.nodes {
            node.envoy.spawn()?;
        }
        for node in &mut self.nodes {
            let (admin, url) = (node.admin_url(), format!("{}/api/", node.url()));
            wait_envoy(&mut node.envoy, &admin, &url).await?;
        }
        self.balancer.spawn()?;
        let (admin, url) = (self.balancer_admin_url(), format!("{}/api/", self.url()));
        wait_envoy(&mut self.balancer, &admin, &url).await?;
        // Reads are spread only over nodes the balancer has seen healthy.
        let expected = self.nodes.len();
        wait_for(
            &mut self.balancer,
            "every node healthy at the load balancer",
            || async {
                let clusters = get_text(&format!("{admin}/clusters")).await.ok()?;
                let healthy = clusters
                    .lines()
                    .filter(|l| l.starts_with("nodes::") && l.ends_with("::health_flags::healthy"))
                    .count();
                (healthy == expected).then_some(())
            },
        )
        .await
    }

    /// The load balancer's URL, without a trailing slash.
    pub fn url(&self) -> String {
        self.topology.balancer.public.url()
    }

    pub fn balancer_admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.topology.balancer.admin_port)
    }

    pub fn primary(&self) -> &Node {
        &self.nodes[0]
    }

    pub fn primary_mut(&mut self) -> &mut Node {
        &mut self.nodes[0]
    }

    /// Replica `i`, counting from 1 as in `replica-1`.
    pub fn replica(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn replica_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    pub fn replicas(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.spec.role == Role::Replica)
    }

    /// Every process with its log file, in start order.
    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.nodes
            .iter()
            .flat_map(|n| [&n.backend, &n.envoy])
            .chain(std::iter::once(&self.balancer))
    }

    /// Waits until some process of the cluster ends by itself and returns its
    /// name and exit status.
    pub async fn wait_for_exit(&mut self) -> (String, String) {
        loop {
            let processes = self
                .nodes
                .iter_mut()
                .flat_map(|n| [&mut n.backend, &mut n.envoy])
                .chain(std::iter::once(&mut self.balancer));
            for process in processes {
                if let Some(status) = process.exited() {
                    let status = status.map_or("never started".into(), |s| s.to_string());
                    return (process.name.clone(), status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every process: the load balancer first, the kv-backends last, so
    /// that nothing in flight reaches a backend that is already gone.
    pub async fn stop(mut self) -> Result<()> {
        let grace = Duration::from_secs(5);
        self.balancer.stop(grace).await?;
        for node in &mut self.nodes {
            node.envoy.stop(grace).await?;
        }
        for node in &mut self.nodes {
            node.backend.stop(grace).await?;
        }
        Ok(())
    }
}

/// 32 random bytes, hex: a fresh replication secret.
pub fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn wait_http_ok(process: &mut Process, url: &str) -> Result<()> {
    wait_for(process, url, || async {
        let response = client().get(url).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await
}

async fn wait_envoy(process: &mut Process, admin: &str, url: &str) -> Result<()> {
    wait_for(process, "Envoy admin /ready", || async {
        let ready = get_text(&format!("{admin}/ready")).await.ok()?;
        (ready.trim() == "LIVE").then_some(())
    })
    .await?;
    wait_http_ok(process, url).await
}

/// Polls `check` until it gives `Some`, failing early (with the end of the log)
/// when the process ends, and after [`READY_TIMEOUT`].
async fn wait_for<F, Fut>(process: &mut Process, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = process.exited() {
            bail!(
                "{} ended before it was ready ({}); end of {}:\n{}",
                process.name,
                status.map_or("never started".into(), |s| s.to_string()),
                process.log_path.display(),
                process.log_excerpt()
            );
        }
        if check().await.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready after {:?} (waiting for {what}); end of {}:\n{}",
                process.name,
                READY_TIMEOUT,
                process.log_path.display(),
                process.log_excerpt()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

async fn get_text(url: &str) -> reqwest::Result<String> {
    client().get(url).send().await?.text().await
}
