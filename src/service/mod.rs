//! Use cases above the engine: the registry of served models (loaded in the background, each
//! with its own scheduler), chat prompt building, tool calling.

pub mod chat;
pub mod tool_stream;
pub mod tools;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::constrain::ConstraintEnv;
use crate::engine::embed::Embedder;
use crate::engine::loaded::LoadedModel;
use crate::engine::scheduler::{self, SchedulerConfig, SchedulerHandle};

/// A chat model being served.
pub struct ServedModel {
    /// Name clients use.
    pub name: String,
    /// The model.
    pub loaded: Arc<LoadedModel>,
    /// Its scheduler.
    pub scheduler: SchedulerHandle,
    /// Unix time it finished loading.
    pub created: u64,
    /// Grammar environment for constrained decoding, built on first use.
    constraint_env: OnceLock<Result<Arc<ConstraintEnv>, String>>,
}

impl ServedModel {
    fn new(name: &str, loaded: Arc<LoadedModel>, scheduler: SchedulerHandle) -> Self {
        Self {
            name: name.to_string(),
            loaded,
            scheduler,
            created: now(),
            constraint_env: OnceLock::new(),
        }
    }

    /// The model's constrained-decoding environment (built once, on first use).
    pub fn constraint_env(&self) -> Result<Arc<ConstraintEnv>, String> {
        self.constraint_env
            .get_or_init(|| {
                ConstraintEnv::new(&self.loaded.tokenizer)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// State of one configured model.
#[derive(Clone)]
pub enum Slot {
    /// Being fetched or loaded.
    Loading,
    /// Ready.
    Ready(Arc<ServedModel>),
    /// Failed to load (message for the log and /health).
    Failed(String),
}

/// Every model ward serves, by name.
pub struct Registry {
    slots: RwLock<HashMap<String, Slot>>,
    embed: RwLock<Option<Result<Arc<Embedder>, String>>>,
    default: String,
    /// Name of the embedding model.
    pub embedding_name: String,
}

impl Registry {
    /// A registry whose models are all still loading.
    pub fn new(names: &[String], embedding_name: &str) -> Arc<Self> {
        Arc::new(Self {
            slots: RwLock::new(names.iter().map(|n| (n.clone(), Slot::Loading)).collect()),
            embed: RwLock::new(None),
            default: names.first().cloned().unwrap_or_default(),
            embedding_name: embedding_name.to_string(),
        })
    }

    /// Loads every model on background threads (fetching via `resolve` first).
    pub fn load_all(
        self: &Arc<Self>,
        resolve: impl Fn(&str) -> anyhow::Result<PathBuf> + Send + Sync + Clone + 'static,
        cfg: SchedulerConfig,
    ) {
        let names: Vec<String> = self
            .slots
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let (reg, resolve, cfg) = (self.clone(), resolve.clone(), cfg.clone());
            std::thread::spawn(move || {
                let slot = match resolve(&name).and_then(|p| Ok(LoadedModel::open(&p)?)) {
                    Ok(m) => {
                        let loaded = Arc::new(m);
                        let kv = cfg
                            .kv_tokens
                            .max(loaded.context_length().min(cfg.kv_tokens * 4));
                        let scheduler = scheduler::spawn(
                            loaded.clone(),
                            SchedulerConfig {
                                kv_tokens: kv,
                                ..cfg
                            },
                        );
                        tracing::info!(model = %name, seconds = loaded.load_seconds, "model ready");
                        Slot::Ready(Arc::new(ServedModel::new(&name, loaded, scheduler)))
                    }
                    Err(e) => {
                        tracing::error!(model = %name, error = %format!("{e:#}"), "model failed to load");
                        Slot::Failed(format!("{e:#}"))
                    }
                };
                if let Ok(mut s) = reg.slots.write() {
                    s.insert(name, slot);
                }
            });
        }
        let reg = self.clone();
        std::thread::spawn(move || {
            let r = resolve(&reg.embedding_name)
                .and_then(|dir| Ok(Embedder::load(&dir)?))
                .map(Arc::new)
                .map_err(|e| format!("{e:#}"));
            if let Err(e) = &r {
                tracing::warn!(error = %e, "embedding model unavailable");
            }
            if let Ok(mut slot) = reg.embed.write() {
                *slot = Some(r);
            }
        });
    }

    /// Installs an already-loaded model (tests, CLI).
    pub fn insert(&self, name: &str, loaded: Arc<LoadedModel>, cfg: SchedulerConfig) {
        let scheduler = scheduler::spawn(loaded.clone(), cfg);
        let m = ServedModel::new(name, loaded, scheduler);
        if let Ok(mut s) = self.slots.write() {
            s.insert(name.to_string(), Slot::Ready(Arc::new(m)));
        }
    }

    /// Installs an embedding model (tests).
    pub fn set_embedder(&self, e: Arc<Embedder>) {
        if let Ok(mut slot) = self.embed.write() {
            *slot = Some(Ok(e));
        }
    }

    /// Looks a model up; `None` picks the default.
    pub fn get(&self, name: Option<&str>) -> Option<Slot> {
        let name = name.filter(|n| !n.is_empty()).unwrap_or(&self.default);
        self.slots.read().ok()?.get(name).cloned()
    }

    /// All slots, by name.
    pub fn slots(&self) -> Vec<(String, Slot)> {
        let mut v: Vec<_> = self
            .slots
            .read()
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The embedding model: `None` while loading, `Some(Err)` when unavailable.
    pub fn embedder(&self) -> Option<Result<Arc<Embedder>, String>> {
        self.embed.read().ok()?.clone()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
