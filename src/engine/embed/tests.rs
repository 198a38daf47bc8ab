//! Tests of the embedder against the real all-MiniLM-L6-v2 files (fetched once by the catalog)
//! and against reference vectors from an independent implementation.

use std::path::Path;
use std::sync::OnceLock;

use super::Embedder;
use crate::engine::error::EngineError;

fn model_dir() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| crate::catalog::ensure("all-minilm-l6-v2").expect("fetch all-minilm-l6-v2"))
}

fn embedder() -> &'static Embedder {
    static MODEL: OnceLock<Embedder> = OnceLock::new();
    MODEL.get_or_init(|| Embedder::load(model_dir()).expect("load all-minilm-l6-v2"))
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn vectors_have_384_unit_norm_dimensions() {
    let e = embedder();
    assert_eq!(e.dimensions(), 384);
    assert_eq!(e.max_tokens(), 256);
    let out = e
        .embed(&texts(&[
            "hello",
            "a somewhat longer sentence about firewalls",
        ]))
        .unwrap();
    assert_eq!(out.len(), 2);
    for v in &out {
        assert_eq!(v.len(), 384);
        let norm = dot(v, v).sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn identical_texts_give_identical_vectors() {
    let out = embedder()
        .embed(&texts(&[
            "port scan from 10.0.0.5",
            "port scan from 10.0.0.5",
        ]))
        .unwrap();
    assert_eq!(out[0], out[1]);
}

#[test]
fn padding_does_not_change_a_vector() {
    let e = embedder();
    let alone = e.embed(&texts(&["short"])).unwrap();
    let long = "a much longer input that forces the short one to be padded in its batch";
    let batched = e.embed(&texts(&[long, "short"])).unwrap();
    let d = max_diff(&alone[0], &batched[1]);
    assert!(d < 1e-5, "padded vector differs by {d}");
}

#[test]
fn related_texts_score_higher_than_unrelated() {
    let out = embedder()
        .embed(&texts(&[
            "failed ssh login for root",
            "authentication failure via ssh",
            "chocolate cake recipe",
        ]))
        .unwrap();
    let related = dot(&out[0], &out[1]);
    let unrelated = dot(&out[0], &out[2]);
    // The numpy reference below gives 0.668 and 0.045.
    assert!(related > unrelated + 0.3, "{related} vs {unrelated}");
}

/// First 8 values of each expected vector. Produced by an independent numpy re-implementation
/// of BERT (float64, exact erf GELU) + mean pooling + L2 normalisation, reading
/// `model.safetensors` with the `safetensors` package and tokenizing with the Python
/// `tokenizers` package (truncation and padding off); one sequence at a time, no padding.
/// torch and sentence-transformers were not used.
const REFERENCE: [(&str, [f32; 8]); 3] = [
    (
        "failed ssh login for root",
        [
            0.0503497,
            -0.00130979,
            -0.0254397,
            -0.0448506,
            0.0099129,
            -0.0399824,
            -0.0397581,
            0.0459237,
        ],
    ),
    (
        "authentication failure via ssh",
        [
            0.0466298,
            0.0616823,
            -0.0191759,
            -0.0355648,
            -0.0219153,
            -0.0133351,
            0.0348024,
            -0.00553846,
        ],
    ),
    (
        "The quick brown fox jumps over the lazy dog.",
        [
            0.0439335,
            0.0589344,
            0.0481784,
            0.0775481,
            0.0267444,
            -0.0376296,
            -0.00260509,
            -0.059943,
        ],
    ),
];

#[test]
fn matches_reference_implementation() {
    // One batch, so the shorter inputs are padded: the masks must hold.
    let inputs: Vec<String> = REFERENCE.iter().map(|(t, _)| (*t).to_owned()).collect();
    let out = embedder().embed(&inputs).unwrap();
    for ((text, expected), got) in REFERENCE.iter().zip(&out) {
        let d = max_diff(&got[..8], expected);
        assert!(d < 1e-3, "{text}: {:?} vs {expected:?}", &got[..8]);
    }
}

#[test]
fn token_inputs_match_text_inputs() {
    let e = embedder();
    let text = "user root logged in from 192.168.1.7";
    let enc = e.tokenizer.encode(text, false).unwrap();
    let from_ids = e.embed_tokens(&[enc.get_ids().to_vec()]).unwrap();
    let from_text = e.embed(&texts(&[text])).unwrap();
    assert!(max_diff(&from_ids[0], &from_text[0]) < 1e-6);
    assert_eq!(e.count_tokens(text).unwrap(), enc.get_ids().len() + 2);
}

#[test]
fn over_long_input_is_an_error_not_a_truncation() {
    let e = embedder();
    let long = "word ".repeat(300);
    assert_eq!(e.count_tokens(&long).unwrap(), 302);
    let err = e.embed(&texts(&["fine", &long])).unwrap_err();
    assert!(
        matches!(err, EngineError::InvalidParameter { param: "input", ref reason }
            if reason.contains("input 1") && reason.contains("302") && reason.contains("256")),
        "{err}"
    );
    // 254 content ids + [CLS] + [SEP] = 256 fits; one more does not.
    assert!(e.embed_tokens(&[vec![2773; 254]]).is_ok());
    let err = e.embed_tokens(&[vec![2773; 255]]).unwrap_err();
    assert!(matches!(err, EngineError::InvalidParameter { .. }), "{err}");
}

#[test]
fn bad_inputs_are_rejected() {
    let e = embedder();
    assert!(matches!(
        e.embed(&texts(&[""])),
        Err(EngineError::InvalidParameter { .. })
    ));
    assert!(matches!(
        e.embed_tokens(&[vec![]]),
        Err(EngineError::InvalidParameter { .. })
    ));
    let err = e.embed_tokens(&[vec![1, 30522]]).unwrap_err();
    assert!(err.to_string().contains("30522"), "{err}");
    assert!(e.embed(&[]).unwrap().is_empty());
}

#[test]
fn load_errors_name_the_file() {
    let src = model_dir();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let load_err = || {
        Embedder::load(d)
            .err()
            .expect("load should fail")
            .to_string()
    };

    assert!(load_err().contains("config.json"));
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert!(load_err().contains("config.json"));

    std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    assert!(load_err().contains("1_Pooling"));
    std::fs::create_dir(d.join("1_Pooling")).unwrap();
    let pooling = Path::new("1_Pooling").join("config.json");
    std::fs::copy(src.join(&pooling), d.join(&pooling)).unwrap();
    assert!(load_err().contains("tokenizer.json"));

    std::fs::copy(src.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    assert!(load_err().contains("model.safetensors"));
    std::fs::write(d.join("model.safetensors"), b"garbage").unwrap();
    assert!(load_err().contains("model.safetensors"));
}
