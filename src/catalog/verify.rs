//! Integrity: streaming sha256, the tree hash of a directory entry, and the `.verified` stamp
//! that lets ward skip rehashing a file whose size and mtime have not changed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{CatalogError, Result};
use super::temp::TempPath;

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The hex sha256 and byte count so far, and the inner writer.
    pub(crate) fn finish(self) -> (Digest256, W) {
        let digest = Digest256 {
            sha256: hex::encode(self.hasher.finalize()),
            size: self.len,
        };
        (digest, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A content hash and the byte count it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest256 {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Bytes hashed.
    pub size: u64,
}

/// Hashes a file by streaming it.
pub(crate) fn hash_file(path: &Path) -> Result<Digest256> {
    let mut file = File::open(path).map_err(CatalogError::io("cannot open", path))?;
    let mut w = HashingWriter::new(std::io::sink());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(CatalogError::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])
            .map_err(CatalogError::io("cannot hash", path))?;
    }
    Ok(w.finish().0)
}

/// The tree hash of a directory's files given each one's digest, keyed by `/`-separated
/// relative path: the sha256 of `sha256sum`'s lines (`HEX  PATH\n`) in byte order of the paths.
/// The size is the sum of the file sizes.
pub(crate) fn tree_digest(files: &BTreeMap<String, Digest256>) -> Digest256 {
    let mut hasher = Sha256::new();
    let mut size = 0;
    for (path, d) in files {
        hasher.update(format!("{}  {}\n", d.sha256, path).as_bytes());
        size += d.size;
    }
    Digest256 {
        sha256: hex::encode(hasher.finalize()),
        size,
    }
}

/// Every regular file under `root` whose name does not start with `.`, as sorted relative paths.
pub(crate) fn walk(root: &Path) -> Result<Vec<String>> {
    fn go(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let dir = root.join(rel);
        let rd = std::fs::read_dir(&dir).map_err(CatalogError::io("cannot list", &dir))?;
        for item in rd {
            let item = item.map_err(CatalogError::io("cannot list", &dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ty = item
                .file_type()
                .map_err(CatalogError::io("cannot stat", item.path()))?;
            if ty.is_dir() {
                go(root, &child, out)?;
            } else if ty.is_file() {
                out.push(child);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(root, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// Hashes a directory entry from scratch.
pub(crate) fn hash_tree(root: &Path) -> Result<Digest256> {
    let mut files = BTreeMap::new();
    for rel in walk(root)? {
        let d = hash_file(&root.join(&rel))?;
        files.insert(rel, d);
    }
    Ok(tree_digest(&files))
}

/// Size and modification time of one file, as recorded in a stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileState {
    /// Relative path (empty for a single-file entry).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
}

/// Proof that content with `sha256` was hashed while its files had these sizes and mtimes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    /// The verified sha256 (file hash or tree hash).
    pub sha256: String,
    /// The state of every file covered.
    pub files: Vec<FileState>,
}

/// Size and mtime of one file.
pub(crate) fn file_state(path: &Path, rel: &str) -> Result<FileState> {
    let meta = std::fs::metadata(path).map_err(CatalogError::io("cannot stat", path))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Ok(FileState {
        path: rel.to_owned(),
        size: meta.len(),
        mtime_ns,
    })
}

/// Where an entry is, and where its stamp is.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A single file; the stamp is `.NAME.verified` beside it.
    File(PathBuf),
    /// A directory; the stamp is `.verified` inside it.
    Dir(PathBuf),
}

impl Target {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Target::File(p) | Target::Dir(p) => p,
        }
    }

    pub(crate) fn stamp_path(&self) -> PathBuf {
        match self {
            Target::File(p) => {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                p.with_file_name(format!(".{name}.verified"))
            }
            Target::Dir(p) => p.join(".verified"),
        }
    }

    /// Whether the file or directory exists.
    pub(crate) fn present(&self) -> bool {
        match self {
            Target::File(p) => p.is_file(),
            Target::Dir(p) => p.is_dir(),
        }
    }

    /// The current size and mtime of every file the entry covers.
    pub(crate) fn states(&self) -> Result<Vec<FileState>> {
        match self {
            Target::File(p) => Ok(vec![file_state(p, "")?]),
            Target::Dir(d) => walk(d)?
                .iter()
                .map(|rel| file_state(&d.join(rel), rel))
                .collect(),
        }
    }

    /// Hashes the content from scratch.
    pub(crate) fn hash(&self) -> Result<Digest256> {
        match self {
            Target::File(p) => hash_file(p),
            Target::Dir(d) => hash_tree(d),
        }
    }

    /// Whether a stamp says the content still has `sha256` (no hashing).
    pub(crate) fn stamped(&self, sha256: &str) -> bool {
        let Ok(text) = std::fs::read_to_string(self.stamp_path()) else {
            return false;
        };
        let Ok(stamp) = serde_json::from_str::<Stamp>(&text) else {
            return false;
        };
        stamp.sha256 == sha256 && self.states().is_ok_and(|now| now == stamp.files)
    }

    /// Records that the content currently on disk has `sha256`.
    pub(crate) fn write_stamp(&self, sha256: &str) -> Result<()> {
        let stamp = Stamp {
            sha256: sha256.to_owned(),
            files: self.states()?,
        };
        let path = self.stamp_path();
        let text = serde_json::to_string(&stamp).unwrap_or_default();
        // Written aside and renamed, so a concurrent reader never sees half a stamp.
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = TempPath::new(dir, ".verified");
        std::fs::write(tmp.path(), text).map_err(CatalogError::io("cannot write", tmp.path()))?;
        std::fs::rename(tmp.path(), &path).map_err(CatalogError::io("cannot rename to", &path))?;
        tmp.keep = true;
        Ok(())
    }

    /// Verified if the stamp is current; otherwise hashes, compares with `expected`, and
    /// stamps on success. Returns whether the content matches.
    pub(crate) fn verify(&self, expected: &Digest256) -> Result<bool> {
        if self.stamped(&expected.sha256) {
            return Ok(true);
        }
        let actual = self.hash()?;
        if actual != *expected {
            return Ok(false);
        }
        if let Err(e) = self.write_stamp(&expected.sha256) {
            tracing::warn!("{e}; the next check will hash again");
        }
        Ok(true)
    }
}
