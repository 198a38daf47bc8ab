//! The registry of hand-copied GGUF models (`ward import`), kept in `home/models/imported.toml`:
//! each model's name, path, sha256 and size, plus the mtime seen when it was hashed so that a
//! later check need not hash it again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{CatalogError, Result};
use super::spec::{Catalog, valid_name};
use super::store::check_gguf;
use super::temp::TempPath;
use super::verify::{file_state, hash_file};

/// One imported model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// The name it is known by.
    pub name: String,
    /// Absolute path of the .gguf file.
    pub path: PathBuf,
    /// sha256 recorded at import.
    pub sha256: String,
    /// Size in bytes recorded at import.
    pub size: u64,
    /// Modification time (ns since the epoch) when last hashed.
    #[serde(default)]
    pub mtime_ns: u64,
}

/// The registry file's content.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Registry {
    /// Imported models, in import order.
    #[serde(default)]
    pub model: Vec<Imported>,
}

/// `home/models/imported.toml`.
pub fn registry_path(home: &Path) -> PathBuf {
    home.join("models").join("imported.toml")
}

/// Reads the registry; a missing file is an empty registry.
pub fn load(home: &Path) -> Result<Registry> {
    let path = registry_path(home);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(toml::from_str(&text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
        Err(e) => Err(CatalogError::io("cannot read", &path)(e)),
    }
}

fn save(home: &Path, registry: &Registry) -> Result<()> {
    let path = registry_path(home);
    let dir = path.parent().unwrap_or(home);
    std::fs::create_dir_all(dir).map_err(CatalogError::io("cannot create", dir))?;
    let text = toml::to_string(registry).map_err(|e| CatalogError::Invalid(e.to_string()))?;
    let mut tmp = TempPath::new(dir, ".imported.toml");
    std::fs::write(tmp.path(), text).map_err(CatalogError::io("cannot write", tmp.path()))?;
    std::fs::rename(tmp.path(), &path).map_err(CatalogError::io("cannot rename to", &path))?;
    tmp.keep = true;
    Ok(())
}

/// Finds an imported model by name.
pub fn find(home: &Path, name: &str) -> Result<Option<Imported>> {
    Ok(load(home)?.model.into_iter().find(|m| m.name == name))
}

fn mtime_ns(path: &Path) -> Result<u64> {
    Ok(file_state(path, "")?.mtime_ns)
}

/// Registers a GGUF file under `name` (default: its file stem, lowercased), hashing it. Importing
/// a name again replaces the record. Catalog names are refused.
pub fn import(home: &Path, catalog: &Catalog, path: &Path, name: Option<&str>) -> Result<Imported> {
    check_gguf(path)?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_default(),
    };
    valid_name(&name).map_err(|reason| CatalogError::BadName {
        name: name.clone(),
        reason,
    })?;
    if catalog.get(&name).is_some() {
        return Err(CatalogError::BadName {
            name,
            reason: "a catalog entry has this name".into(),
        });
    }
    let path = std::fs::canonicalize(path).map_err(CatalogError::io("cannot resolve", path))?;
    let digest = hash_file(&path)?;
    let model = Imported {
        name,
        mtime_ns: mtime_ns(&path)?,
        path,
        sha256: digest.sha256,
        size: digest.size,
    };
    let mut registry = load(home)?;
    registry.model.retain(|m| m.name != model.name);
    registry.model.push(model.clone());
    save(home, &registry)?;
    Ok(model)
}

/// Whether the file still has the recorded size and mtime (no hashing).
pub fn unchanged(model: &Imported) -> bool {
    file_state(&model.path, "").is_ok_and(|s| s.size == model.size && s.mtime_ns == model.mtime_ns)
}

/// Returns the model's path once it is known to still have its recorded content: unchanged
/// size and mtime, or else a fresh hash that matches (the new mtime is then recorded).
pub fn check(home: &Path, model: &Imported) -> Result<PathBuf> {
    if unchanged(model) {
        return Ok(model.path.clone());
    }
    let digest = hash_file(&model.path)?;
    if digest.sha256 != model.sha256 || digest.size != model.size {
        return Err(CatalogError::HashMismatch {
            what: format!("imported model {} ({})", model.name, model.path.display()),
            expected: model.sha256.clone(),
            expected_size: model.size,
            actual: digest.sha256,
            actual_size: digest.size,
        });
    }
    let mut registry = load(home)?;
    if let Some(m) = registry.model.iter_mut().find(|m| m.name == model.name) {
        m.mtime_ns = mtime_ns(&model.path)?;
        if let Err(e) = save(home, &registry) {
            tracing::warn!("{e}; the next check will hash {} again", model.name);
        }
    }
    Ok(model.path.clone())
}
