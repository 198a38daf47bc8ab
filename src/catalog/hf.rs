//! `hf:OWNER/REPO/FILE.gguf` references, resolved through the `hf-hub` crate and the standard
//! Hugging Face cache layout (`models--OWNER--REPO/refs/main`, `snapshots/REV/FILE`). With
//! `HF_HUB_OFFLINE` set only the cache is consulted, which is how an air-gapped host uses a
//! cache copied from elsewhere.

use std::path::PathBuf;

use hf_hub::Cache;
use hf_hub::api::sync::ApiBuilder;

use super::error::{CatalogError, Result};

/// Where the Hugging Face cache is, and whether the network may be used.
#[derive(Clone, Debug)]
pub struct HfOptions {
    /// The hub cache directory (the one holding `models--OWNER--REPO`).
    pub cache_dir: PathBuf,
    /// Resolve from the cache only.
    pub offline: bool,
    /// Hub endpoint override (`HF_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Access token (`HF_TOKEN`); the cache's `token` file is used otherwise.
    pub token: Option<String>,
}

impl HfOptions {
    /// Reads the standard variables: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE`
    /// (`1`, `true`, `yes`, `on`); `HF_ENDPOINT`; `HF_TOKEN`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("huggingface/hub")))
            .unwrap_or_else(|| {
                dirs::home_dir()
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(".cache/huggingface/hub")
            });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            cache_dir,
            offline,
            endpoint: var("HF_ENDPOINT"),
            token: var("HF_TOKEN"),
        }
    }
}

/// A parsed `OWNER/REPO/FILE.gguf` (the part after `hf:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfRef {
    /// `OWNER/REPO`.
    pub repo: String,
    /// Path of the file inside the repository (may contain `/`).
    pub file: String,
}

impl HfRef {
    /// Parses `OWNER/REPO/FILE.gguf`.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = || CatalogError::BadHfRef(format!("hf:{spec}"));
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.len() < 3
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == "..")
            || !spec.ends_with(".gguf")
        {
            return Err(bad());
        }
        Ok(Self {
            repo: format!("{}/{}", parts[0], parts[1]),
            file: parts[2..].join("/"),
        })
    }
}

/// Returns the local path of the file: from the cache if there, else downloaded into the cache
/// (unless offline).
pub(crate) fn fetch(r: &HfRef, opts: &HfOptions, progress: bool) -> Result<PathBuf> {
    let cache = Cache::new(opts.cache_dir.clone());
    if let Some(path) = cache.model(r.repo.clone()).get(&r.file) {
        return Ok(path);
    }
    if opts.offline {
        return Err(CatalogError::HfNotCached {
            repo: r.repo.clone(),
            file: r.file.clone(),
            cache: opts.cache_dir.clone(),
        });
    }
    let hub_err = |e: hf_hub::api::sync::ApiError| CatalogError::Hf {
        repo: r.repo.clone(),
        file: r.file.clone(),
        detail: e.to_string(),
    };
    let mut builder = ApiBuilder::from_cache(cache).with_progress(progress);
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if opts.token.is_some() {
        builder = builder.with_token(opts.token.clone());
    }
    let api = builder.build().map_err(hub_err)?;
    api.model(r.repo.clone()).get(&r.file).map_err(hub_err)
}
