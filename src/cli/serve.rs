//! `ward serve`: loads the configured models in the background and serves the HTTP API at once
//! (`/health` says `loading` until they are ready).

use std::path::PathBuf;

use crate::api::{self, AppState};
use crate::config::{Config, Overrides};
use crate::engine::scheduler::SchedulerConfig;
use crate::service::Registry;

/// `ward serve` flags.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Model to serve (repeatable; the first is the default). Default: the catalog's default.
    #[arg(long = "model", short = 'm')]
    pub models: Vec<String>,
    /// Address to bind.
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind.
    #[arg(long)]
    pub port: Option<u16>,
    /// Accepted API key (repeatable).
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// TOML configuration file.
    #[arg(long, env = "WARD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Runs the server until Ctrl-C.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let flags = Overrides {
        host: a.host,
        port: a.port,
        models: a.models,
        api_keys: a.api_keys,
    };
    let mut cfg = Config::load(a.config.as_deref(), |k| std::env::var(k).ok(), &flags)?;
    if cfg.models.is_empty() {
        cfg.models
            .push(crate::catalog::default_model()?.to_string());
    }
    let registry = Registry::new(&cfg.models, &cfg.embedding_model);
    let sched = SchedulerConfig {
        queue_capacity: cfg.queue_capacity,
        max_running: cfg.max_running,
        max_batch_tokens: cfg.max_batch_tokens,
        kv_tokens: cfg.kv_tokens,
        ..SchedulerConfig::default()
    };
    let embedding = cfg.embedding_model.clone();
    registry.load_all(
        move |name: &str| {
            let p = std::path::Path::new(name);
            if p.is_dir() {
                Ok(p.to_path_buf())
            } else if name == embedding {
                crate::catalog::ensure(name)
            } else {
                crate::catalog::resolve_model(name)
            }
        },
        sched,
    );
    let state = AppState::new(registry, cfg.api_keys.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        eprintln!(
            "ward listening on http://{addr} (models: {}; auth: {})",
            cfg.models.join(", "),
            if cfg.api_keys.is_empty() { "off" } else { "on" }
        );
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
