//! Finds the three programs a cluster runs: Envoy, the filter's `.wasm` and the
//! kv-backend. Each can be named by an environment variable; otherwise the
//! workspace's own build outputs (and the Envoy that `make` installs) are used.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The Envoy release the project is built and tested against.
pub const ENVOY_VERSION: &str = "1.40.";

/// Paths of the programs a cluster is made of.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    pub backend: PathBuf,
}

impl Binaries {
    /// Looks up every program, from `ENVOY_BIN`, `REPLIKV_WASM` and
    /// `REPLIKV_BACKEND_BIN` when set, else from the workspace.
    pub fn locate(root: &Path) -> Result<Self> {
        let envoy = match std::env::var_os("ENVOY_BIN") {
            Some(path) => PathBuf::from(path),
            None => find_envoy(root).context(
                "no Envoy found: set ENVOY_BIN, put envoy on PATH, or run scripts/install-envoy.sh",
            )?,
        };
        let wasm = std::env::var_os("REPLIKV_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/wasm32-wasip1/release/replikv_filter.wasm"));
        let backend = match std::env::var_os("REPLIKV_BACKEND_BIN") {
            Some(path) => PathBuf::from(path),
            None => [
                root.join("target/release/kv-backend"),
                root.join("target/debug/kv-backend"),
            ]
            .into_iter()
            .find(|path| path.is_file())
            .unwrap_or_else(|| root.join("target/release/kv-backend")),
        };
        let binaries = Self {
            envoy,
            wasm,
            backend,
        };
        binaries.check()?;
        Ok(binaries)
    }

    fn check(&self) -> Result<()> {
        for (what, path, hint) in [
            ("Envoy", &self.envoy, "scripts/install-envoy.sh"),
            ("filter", &self.wasm, "make build-wasm"),
            (
                "kv-backend",
                &self.backend,
                "cargo build --release -p replikv-kv-backend",
            ),
        ] {
            if !path.is_file() {
                bail!(
                    "{what} not found at {} (build it with `{hint}`)",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// `envoy` on PATH, else the copy `scripts/install-envoy.sh` puts in `.envoy/`.
fn find_envoy(root: &Path) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("envoy"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let installed = root.join(".envoy/bin/envoy");
        installed.is_file().then_some(installed)
    })
}
