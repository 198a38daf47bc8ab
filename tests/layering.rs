//! The layers only look down: the engine never imports HTTP (axum) or the layers above it.

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn engine_and_service_do_not_look_up() {
    for (layer, forbidden) in [
        (
            "src/engine",
            &["axum", "crate::api", "crate::service", "crate::cli"][..],
        ),
        ("src/service", &["axum", "crate::api", "crate::cli"][..]),
        (
            "src/catalog",
            &["axum", "crate::api", "crate::service", "crate::engine"][..],
        ),
    ] {
        let mut files = Vec::new();
        rust_files(std::path::Path::new(layer), &mut files);
        assert!(!files.is_empty(), "{layer} has no files");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for word in forbidden {
                assert!(!text.contains(word), "{} mentions `{word}`", f.display());
            }
        }
    }
}

#[test]
fn every_source_file_opens_with_a_doc_comment() {
    let mut files = Vec::new();
    rust_files(std::path::Path::new("src"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} lacks a //! header",
            f.display()
        );
    }
}
