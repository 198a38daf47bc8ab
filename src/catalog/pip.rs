//! Downloads one package archive with `python3 -m pip download --no-deps`, the only way ward
//! reaches a package index. pip's configuration (index, find-links, proxy, certificates) applies.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::{CatalogError, Result};
use super::spec::Source;

/// How to run pip.
#[derive(Clone, Debug)]
pub struct PipOptions {
    /// The Python interpreter (`python3` by default).
    pub python: String,
    /// Extra arguments for `pip download` (for example `--no-index --find-links DIR`).
    pub extra_args: Vec<String>,
}

impl Default for PipOptions {
    fn default() -> Self {
        Self {
            python: "python3".into(),
            extra_args: Vec::new(),
        }
    }
}

/// The `pip download` command line for a source, into `dir`.
pub(crate) fn command(opts: &PipOptions, source: &Source, dir: &Path) -> Command {
    let mut cmd = Command::new(&opts.python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--no-input"])
        .args(["--disable-pip-version-check", "--progress-bar", "off"])
        .arg("--dest")
        .arg(dir);
    if source.sdist {
        // Only this package as an sdist: `--no-binary :all:` would also force pip to build the
        // sdist's build requirements (cmake, ninja) from source to prepare its metadata.
        cmd.args(["--no-binary", source.dist_name()]);
    } else {
        cmd.args(["--only-binary", ":all:"]);
    }
    cmd.args(&opts.extra_args).arg(&source.package);
    cmd
}

/// Runs pip and returns the path of the one archive it saved into the empty directory `dir`.
pub(crate) fn download(opts: &PipOptions, source: &Source, dir: &Path) -> Result<PathBuf> {
    let output = command(opts, source, dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CatalogError::PythonMissing {
            python: opts.python.clone(),
            source: e,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = tail(&stderr, 6);
        return Err(if stderr.contains("No module named pip") {
            CatalogError::PipMissing {
                python: opts.python.clone(),
                detail,
            }
        } else if stderr.contains("No matching distribution found")
            || stderr.contains("Could not find a version that satisfies")
        {
            CatalogError::PackageNotFound {
                package: source.package.clone(),
                detail,
            }
        } else {
            CatalogError::PipFailed {
                package: source.package.clone(),
                status: output.status.to_string(),
                detail,
            }
        });
    }
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(CatalogError::io("cannot list", dir))? {
        let item = item.map_err(CatalogError::io("cannot list", dir))?;
        if item.file_type().is_ok_and(|t| t.is_file()) {
            found.push(item.path());
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(CatalogError::PipFailed {
            package: source.package.clone(),
            status: "ok".into(),
            detail: format!("expected one archive in {}, found {n}", dir.display()),
        }),
    }
}

/// The last `n` non-empty lines of `text`, joined with ` | `.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" | ")
}
