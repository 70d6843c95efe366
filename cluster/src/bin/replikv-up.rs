//! `make up`: starts the local replikv cluster in the foreground and stops every
//! process it started on Ctrl-C, SIGTERM, or when any of them dies.
//! `replikv-up render` writes the Envoy configs for a deployment instead.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use replikv_cluster::render::{render_all_with, RenderOptions};
use replikv_cluster::{workspace_root, Binaries, Cluster, ClusterOptions, PortPlan, Topology};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(about = "Run a replikv cluster (load balancer, primary, replicas) on 127.0.0.1")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Number of replica nodes.
    #[arg(long, env = "REPLIKV_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// The load balancer's port; the primary gets the next one, then the replicas
    /// (0: any free ports).
    #[arg(long, env = "REPLIKV_BASE_PORT", default_value_t = 10000)]
    base_port: u16,
    /// Where logs, rendered Envoy configs and data go.
    #[arg(long, env = "REPLIKV_RUN_DIR", default_value = ".run")]
    run_dir: PathBuf,
    /// Delete the nodes' data before starting.
    #[arg(long)]
    fresh: bool,
    /// Envoy worker threads per Envoy.
    #[arg(long, env = "REPLIKV_CONCURRENCY", default_value_t = 2)]
    concurrency: usize,
    /// Replicas that must have applied a write before the primary answers it
    /// (0: asynchronous replication, the default).
    #[arg(long, env = "REPLIKV_MIN_REPLICA_ACKS", default_value_t = 0)]
    min_replica_acks: usize,
    /// A kv-backend zone, `NAME:SIZE[:timeout=DURATION][:type=string|ip|prefix]`
    /// (repeatable; zone `default` always exists).
    #[arg(long = "zone")]
    zones: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write the Envoy configs of a deployment to a folder.
    Render {
        #[arg(long, value_enum, default_value_t = Target::Local)]
        target: Target,
        /// Where the Envoys will find the filter's .wasm.
        #[arg(long)]
        wasm: String,
        #[arg(long)]
        out: PathBuf,
        /// Leave the replikv filter out of the nodes (plain Envoy proxies, no
        /// replication): the benchmark's "without the filter" baseline.
        #[arg(long)]
        no_filter: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Local,
    Compose,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Some(Command::Render {
            target,
            wasm,
            out,
            no_filter,
        }) => render(&args, *target, wasm, out, !no_filter),
        None => up(&args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("replikv-up: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn render(
    args: &Args,
    target: Target,
    wasm: &str,
    out: &PathBuf,
    filter: bool,
) -> Result<ExitCode> {
    let topology = match target {
        Target::Local => Topology::local(args.replicas, port_plan(args.base_port))?,
        Target::Compose => Topology::compose(args.replicas)?,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for config in render_all_with(
        &topology,
        wasm,
        RenderOptions {
            filter,
            min_replica_acks: args.min_replica_acks,
        },
    )? {
        let path = out.join(format!("{}.yaml", config.name));
        std::fs::write(&path, config.yaml)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn up(args: &Args) -> Result<ExitCode> {
    let binaries = Binaries::locate(&workspace_root())?;
    let topology = Topology::local(args.replicas, port_plan(args.base_port))?;
    let mut options = ClusterOptions::new(&args.run_dir)?;
    options.concurrency = args.concurrency;
    options.zones = args.zones.clone();
    options.min_replica_acks = args.min_replica_acks;
    match std::env::var("REPLIKV_SECRET") {
        Ok(secret) => options.secret = secret,
        Err(_) => {
            println!("REPLIKV_SECRET is unset: this run uses a fresh random replication secret.")
        }
    }
    if args.fresh {
        let data = args.run_dir.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing {}", data.display()))?;
        }
    }
    // Signals are watched before anything starts, so that a Ctrl-C during
    // start-up still stops what was started.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    println!(
        "starting replikv: 1 load balancer, 1 primary, {} replica(s)",
        args.replicas
    );
    let mut cluster = tokio::select! {
        started = Cluster::start(topology, &binaries, options) => started?,
        _ = terminate.recv() => return Ok(ExitCode::FAILURE),
        _ = interrupt.recv() => return Ok(ExitCode::FAILURE),
    };
    print_banner(&cluster);

    let code = tokio::select! {
        _ = terminate.recv() => ExitCode::SUCCESS,
        _ = interrupt.recv() => ExitCode::SUCCESS,
        (name, status) = cluster.wait_for_exit() => {
            eprintln!("replikv-up: {name} ended unexpectedly ({status}); stopping the cluster");
            ExitCode::FAILURE
        }
    };
    println!("stopping replikv");
    cluster.stop().await?;
    println!("stopped");
    Ok(code)
}

fn print_banner(cluster: &Cluster) {
    let lb = cluster.url();
    println!();
    println!("replikv is up:");
    println!("  load balancer  {lb}");
    for node in &cluster.nodes {
        println!(
            "  {:<14} {}   (Envoy admin {})",
            node.name(),
            node.url(),
            node.admin_url()
        );
    }
    println!();
    println!("Try:");
    println!("  curl -i -X POST -d '{{\"greeting\":\"hello\"}}' {lb}/api/9/http/keyvals/default");
    println!("  curl -s {lb}/replicated/9/http/keyvals/default?key=greeting");
    println!();
    println!("Logs:");
    for process in cluster.processes() {
        println!("  {}", process.log_path.display());
    }
    println!();
    println!("Press Ctrl-C to stop.");
}

/// Base port 0 asks for free ports anywhere (tests run several clusters at once).
fn port_plan(base: u16) -> PortPlan {
    match base {
        0 => PortPlan::Ephemeral,
        base => PortPlan::Fixed { base },
    }
}
