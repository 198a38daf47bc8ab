//! Configuration: one typed tree, filled from the TOML file, then the environment (`WARD_*`),
//! then command-line flags, each overriding the one before.
//!
//! ```toml
//! host = "127.0.0.1"
//! port = 8080
//! models = ["smollm2-135m-instruct"]
//! embedding_model = "all-minilm-l6-v2"
//! api_keys = ["ward_xxx"]
//! queue_capacity = 64
//! max_running = 16
//! max_batch_tokens = 512
//! kv_tokens = 32768
//! ```
//!
//! Environment: `WARD_HOST`, `WARD_PORT`, `WARD_MODELS` and `WARD_API_KEYS` (comma separated),
//! `WARD_EMBEDDING_MODEL`, `WARD_QUEUE_CAPACITY`, `WARD_MAX_RUNNING`, `WARD_MAX_BATCH_TOKENS`,
//! `WARD_KV_TOKENS`.

use std::path::Path;

use serde::Deserialize;

/// Server settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind.
    pub host: String,
    /// Port to bind.
    pub port: u16,
    /// Chat models to serve (catalog names, imported names or .gguf paths); the first is the default.
    pub models: Vec<String>,
    /// Embedding model (catalog name or directory).
    pub embedding_model: String,
    /// Accepted API keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Waiting requests before 429.
    pub queue_capacity: usize,
    /// Sequences decoded together.
    pub max_running: usize,
    /// Tokens per forward pass, decode tokens first, then prompt chunks: smaller keeps the
    /// running streams' gaps short while new prompts are prefilled, larger starts them sooner.
    pub max_batch_tokens: usize,
    /// KV cache positions per model.
    pub kv_tokens: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            models: Vec::new(),
            embedding_model: "all-minilm-l6-v2".into(),
            api_keys: Vec::new(),
            queue_capacity: 64,
            max_running: 16,
            max_batch_tokens: 512,
            kv_tokens: 32_768,
        }
    }
}

/// Flag values (only those given override).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--host`.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--model`, repeatable.
    pub models: Vec<String>,
    /// `--api-key`, repeatable.
    pub api_keys: Vec<String>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Config {
    /// Builds the configuration: defaults < file < environment < flags.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> anyhow::Result<Self> {
        let mut c = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => Self::default(),
        };
        let num = |k: &str| -> anyhow::Result<Option<usize>> {
            env(k)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| anyhow::anyhow!("{k} must be a number, got {v:?}"))
                })
                .transpose()
        };
        if let Some(v) = env("WARD_HOST") {
            c.host = v;
        }
        if let Some(v) = num("WARD_PORT")? {
            c.port = u16::try_from(v).map_err(|_| anyhow::anyhow!("WARD_PORT out of range"))?;
        }
        if let Some(v) = env("WARD_MODELS") {
            c.models = list(&v);
        }
        if let Some(v) = env("WARD_API_KEYS") {
            c.api_keys = list(&v);
        }
        if let Some(v) = env("WARD_EMBEDDING_MODEL") {
            c.embedding_model = v;
        }
        c.queue_capacity = num("WARD_QUEUE_CAPACITY")?.unwrap_or(c.queue_capacity);
        c.max_running = num("WARD_MAX_RUNNING")?.unwrap_or(c.max_running);
        c.max_batch_tokens = num("WARD_MAX_BATCH_TOKENS")?.unwrap_or(c.max_batch_tokens);
        c.kv_tokens = num("WARD_KV_TOKENS")?.unwrap_or(c.kv_tokens);
        if let Some(h) = &flags.host {
            c.host = h.clone();
        }
        if let Some(p) = flags.port {
            c.port = p;
        }
        if !flags.models.is_empty() {
            c.models = flags.models.clone();
        }
        if !flags.api_keys.is_empty() {
            c.api_keys = flags.api_keys.clone();
        }
        anyhow::ensure!(
            c.queue_capacity > 0 && c.max_running > 0 && c.max_batch_tokens > 0 && c.kv_tokens > 0,
            "queue_capacity, max_running, max_batch_tokens and kv_tokens must be positive"
        );
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ward.toml");
        std::fs::write(
            &f,
            "port = 9000\nhost = \"0.0.0.0\"\napi_keys = [\"file\"]\nmodels = [\"a\"]\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "WARD_API_KEYS" => Some("env1, env2".to_string()),
            "WARD_PORT" => Some("9100".to_string()),
            _ => None,
        };
        let c = Config::load(Some(&f), env, &Overrides::default()).unwrap();
        assert_eq!(
            (c.port, c.host.as_str(), c.models.clone()),
            (9100, "0.0.0.0", vec!["a".to_string()])
        );
        assert_eq!(c.api_keys, vec!["env1", "env2"]);
        let flags = Overrides {
            port: Some(1),
            api_keys: vec!["flag".into()],
            ..Default::default()
        };
        let c = Config::load(Some(&f), env, &flags).unwrap();
        assert_eq!((c.port, c.api_keys.clone()), (1, vec!["flag".to_string()]));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(
            Config::load(
                None,
                |k| (k == "WARD_PORT").then(|| "x".into()),
                &Overrides::default()
            )
            .is_err()
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ward.toml");
        std::fs::write(&f, "prot = 1\n").unwrap();
        assert!(Config::load(Some(&f), |_| None, &Overrides::default()).is_err());
    }

    #[test]
    fn batch_token_budget_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ward.toml");
        std::fs::write(&f, "max_batch_tokens = 256\n").unwrap();
        let c = Config::load(Some(&f), |_| None, &Overrides::default()).unwrap();
        assert_eq!(c.max_batch_tokens, 256);
        let env = |k: &str| (k == "WARD_MAX_BATCH_TOKENS").then(|| "128".to_string());
        let c = Config::load(Some(&f), env, &Overrides::default()).unwrap();
        assert_eq!(c.max_batch_tokens, 128);
        let zero = |k: &str| (k == "WARD_MAX_BATCH_TOKENS").then(|| "0".to_string());
        let e = Config::load(None, zero, &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("max_batch_tokens"), "{e}");
    }
}
