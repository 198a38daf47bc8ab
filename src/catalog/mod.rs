//! The model catalog: what ward knows how to fetch, where it lives on disk, and its verification state.

use std::path::PathBuf;

/// ward's data directory: `$WARD_HOME`, or `~/.cache/ward`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("WARD_HOME") {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("ward")
}

/// Returns the local path of a catalog entry, fetching and verifying it first when absent.
/// Models are files `home()/models/NAME.gguf`; data entries are directories `home()/data/NAME/`.
pub fn ensure(name: &str) -> anyhow::Result<PathBuf> {
    let model = home().join("models").join(format!("{name}.gguf"));
    if model.exists() {
        return Ok(model);
    }
    let data = home().join("data").join(name);
    if data.exists() {
        return Ok(data);
    }
    anyhow::bail!("{name} is not present (fetching is not wired yet)")
}

/// Resolves a `--model` argument: a path to a .gguf file, or a catalog or imported name
/// (fetched on demand).
pub fn resolve_model(arg: &str) -> anyhow::Result<PathBuf> {
    let p = std::path::Path::new(arg);
    if arg.ends_with(".gguf") || p.is_file() {
        anyhow::ensure!(p.is_file(), "model file {arg} does not exist");
        return Ok(p.to_path_buf());
    }
    ensure(arg)
}
