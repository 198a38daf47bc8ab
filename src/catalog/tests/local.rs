//! What needs no index: importing hand-copied GGUF files, resolving `hf:` references from a
//! Hugging Face cache laid out by the test, and resolving model arguments.

use std::path::Path;

use super::super::error::CatalogError;
use super::super::hf::HfOptions;
use super::super::spec::{Catalog, Kind};
use super::super::store::{Origin, Store};
use super::super::{imported, resolve_in};
use super::{catalog, entry, no_pip_opts, sha256_hex, source};

fn tiny_gguf(dir: &Path, name: &str, body: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(body);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn import_registers_checks_and_resolves_hand_copied_models() {
    let home = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let cat = Catalog::builtin().unwrap();
    let store = Store::new(home.path(), cat);
    let model = tiny_gguf(files.path(), "My-Model.Q4.gguf", b"\x03\x00\x00\x00weights");

    let m = imported::import(home.path(), cat, &model, None).unwrap();
    assert_eq!(m.name, "my-model.q4");
    assert_eq!(m.size, 15);
    assert_eq!(m.sha256, sha256_hex(&std::fs::read(&model).unwrap()));
    let text = std::fs::read_to_string(home.path().join("models/imported.toml")).unwrap();
    assert!(
        text.contains(&m.sha256) && text.contains("my-model.q4"),
        "{text}"
    );

    let again = imported::import(home.path(), cat, &model, Some("renamed")).unwrap();
    assert_eq!(imported::load(home.path()).unwrap().model.len(), 2);
    assert_eq!(again.path, m.path);

    let rows = store.list().unwrap();
    let row = rows.iter().find(|r| r.name == "renamed").unwrap();
    assert!(row.present && row.verified && row.origin == Origin::Imported);
    assert_eq!(
        resolve_in(&store, "renamed", &no_pip_opts()).unwrap(),
        m.path
    );

    // Refused: not GGUF, a catalog name, a bad name.
    let text_file = files.path().join("notes.gguf");
    std::fs::write(&text_file, b"hello").unwrap();
    let err = imported::import(home.path(), cat, &text_file, None).unwrap_err();
    assert!(matches!(err, CatalogError::NotGguf(_)), "{err}");
    let err =
        imported::import(home.path(), cat, &model, Some("smollm2-135m-instruct")).unwrap_err();
    assert!(matches!(err, CatalogError::BadName { .. }), "{err}");
    let err = imported::import(home.path(), cat, &model, Some("Has Space")).unwrap_err();
    assert!(matches!(err, CatalogError::BadName { .. }), "{err}");

    // Touched but identical: rehashed and accepted. Changed: refused with both hashes.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes).unwrap();
    assert_eq!(store.ensure("renamed", &no_pip_opts()).unwrap(), m.path);
    std::fs::write(&model, b"GGUF different weights").unwrap();
    let err = store.ensure("renamed", &no_pip_opts()).unwrap_err();
    assert!(err.to_string().contains(&m.sha256), "{err}");
    assert!(
        !store
            .list()
            .unwrap()
            .iter()
            .any(|r| r.name == "renamed" && r.verified)
    );
}

#[test]
fn hf_references_resolve_from_the_cache_when_offline() {
    let home = tempfile::tempdir().unwrap();
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("models--TheOwner--tiny-repo");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(snap.join("sub")).unwrap();
    tiny_gguf(&snap, "tiny.Q8_0.gguf", b"body");
    tiny_gguf(&snap.join("sub"), "nested.gguf", b"body");
    std::fs::write(snap.join("fake.gguf"), b"not a model").unwrap();

    let cat = Catalog::builtin().unwrap();
    let store = Store::new(home.path(), cat);
    let mut opts = no_pip_opts();
    opts.hf = HfOptions {
        cache_dir: hub.path().to_owned(),
        offline: true,
        endpoint: None,
        token: None,
    };
    let got = store
        .pull("hf:TheOwner/tiny-repo/tiny.Q8_0.gguf", &opts)
        .unwrap();
    assert_eq!(got, snap.join("tiny.Q8_0.gguf"));
    let nested = resolve_in(&store, "hf:TheOwner/tiny-repo/sub/nested.gguf", &opts).unwrap();
    assert_eq!(nested, snap.join("sub/nested.gguf"));

    let err = store
        .pull("hf:TheOwner/tiny-repo/absent.gguf", &opts)
        .unwrap_err();
    assert!(matches!(err, CatalogError::HfNotCached { .. }), "{err}");
    let err = store
        .pull("hf:TheOwner/tiny-repo/fake.gguf", &opts)
        .unwrap_err();
    assert!(matches!(err, CatalogError::NotGguf(_)), "{err}");
    for bad in [
        "hf:owner/file.gguf",
        "hf:owner/repo/model.bin",
        "hf:o//r/f.gguf",
    ] {
        let err = store.pull(bad, &opts).unwrap_err();
        assert!(matches!(err, CatalogError::BadHfRef(_)), "{bad}: {err}");
    }
    // Nothing was written to ward's home.
    assert!(!home.path().join("models").exists());
}

#[test]
fn model_arguments_resolve_to_gguf_files() {
    let home = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let bytes = b"GGUF tiny";
    let data_listing = format!("{}  x.json\n", sha256_hex(b"{}"));
    let cat = catalog(vec![
        entry(
            "chatty",
            Kind::Chat,
            &sha256_hex(bytes),
            9,
            vec![source("p==1", "", &["m.gguf"])],
        ),
        entry(
            "facts",
            Kind::Data,
            &sha256_hex(data_listing.as_bytes()),
            2,
            vec![source("q==1", "", &["x.json"])],
        ),
    ]);
    let store = Store::new(home.path(), &cat);
    let opts = no_pip_opts();

    // A path.
    let file = tiny_gguf(files.path(), "local.gguf", b" weights");
    assert_eq!(
        resolve_in(&store, file.to_str().unwrap(), &opts).unwrap(),
        file
    );
    let err = resolve_in(&store, "/nonexistent/x.gguf", &opts).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.gguf"), "{err}");
    std::fs::write(files.path().join("text.gguf"), b"plain").unwrap();
    let text_path = files.path().join("text.gguf");
    assert!(matches!(
        resolve_in(&store, text_path.to_str().unwrap(), &opts),
        Err(CatalogError::NotGguf(_))
    ));

    // A catalog name already in place (no fetch), a non-GGUF entry, an unknown name.
    std::fs::create_dir_all(home.path().join("models")).unwrap();
    std::fs::write(home.path().join("models/chatty.gguf"), bytes).unwrap();
    assert_eq!(
        resolve_in(&store, "chatty", &opts).unwrap(),
        home.path().join("models/chatty.gguf")
    );
    let err = resolve_in(&store, "facts", &opts).unwrap_err();
    assert!(err.to_string().contains("not a GGUF model"), "{err}");
    let err = resolve_in(&store, "nothing-here", &opts).unwrap_err();
    assert!(
        matches!(err, CatalogError::Unknown { .. }) && err.to_string().contains("chatty"),
        "{err}"
    );
}
