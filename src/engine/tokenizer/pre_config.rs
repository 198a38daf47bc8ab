//! The pre-tokenizer of each `tokenizer.ggml.pre` value, as llama.cpp defines it: the list of
//! patterns applied in sequence, plus the flags that travel with it (merge skipping, space
//! clean-up on decoding, BOS default). Patterns are in llama.cpp's syntax; see `regex_step`.

/// One splitting pass.
#[derive(Clone, Copy, Debug)]
pub(super) enum Pattern {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    /// with N = `max_digits` (3 for Llama-3, 1 for Qwen2).
    Llama3 { max_digits: usize },
    /// Any other pattern, in llama.cpp's (ECMAScript) syntax.
    Regex(&'static str),
}

/// How a `tokenizer.ggml.pre` value tokenizes.
#[derive(Clone, Copy, Debug)]
pub(super) struct PreConfig {
    /// The splitting passes, in order.
    pub patterns: &'static [Pattern],
    /// Whether a word that is a token as a whole skips the merges (Llama-3 style).
    pub ignore_merges: bool,
    /// Whether decoding tidies spaces before punctuation (HF `clean_up_tokenization_spaces`).
    pub clean_spaces: bool,
    /// The default for adding BOS when the GGUF does not say.
    pub add_bos: bool,
}

const LLAMA3: &[Pattern] = &[Pattern::Llama3 { max_digits: 3 }];
const QWEN2: &[Pattern] = &[Pattern::Llama3 { max_digits: 1 }];
const GPT2: &[Pattern] = &[Pattern::Gpt2];
const DIGITS_THEN_GPT2: &[Pattern] = &[Pattern::Regex(r"\p{N}"), Pattern::Gpt2];
const DEFAULT: &[Pattern] = &[
    Pattern::Regex(r"[\p{P}\$\+<=>\^~\|]+"),
    Pattern::Gpt2,
    Pattern::Regex(r"\p{N}+"),
    Pattern::Regex(r"[0-9][0-9][0-9]"),
];
const FALCON: &[Pattern] = &[
    Pattern::Regex(r"[\p{P}\$\+<=>\^~\|`]+"),
    Pattern::Gpt2,
    Pattern::Regex(r"[0-9][0-9][0-9]"),
];
const DEEPSEEK_LLM: &[Pattern] = &[
    Pattern::Regex("[\r\n]"),
    Pattern::Regex(concat!(
        "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}",
        "\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}",
        "\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}",
        "\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}",
        "\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}",
        "\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}",
        "\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}",
        "\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}",
        "\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}",
        "\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}",
        "\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}",
        "\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}",
        "\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}",
        "\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}",
        "\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+"
    )),
    Pattern::Regex(
        "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
    ),
    Pattern::Regex(r"\s+$"),
    Pattern::Regex("[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+"),
    Pattern::Regex(r"\p{N}+"),
];
const DEEPSEEK_CODER: &[Pattern] = &[
    Pattern::Regex("[\r\n]"),
    Pattern::Regex(r"\s?\p{L}+"),
    Pattern::Regex(r"\s?\p{P}+"),
    Pattern::Regex("[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+"),
    Pattern::Regex(r"\p{N}"),
];
const DEEPSEEK_V3: &[Pattern] = &[
    Pattern::Regex(r"\p{N}{1,3}"),
    Pattern::Regex("[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+"),
    Pattern::Regex(concat!(
        r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^"##,
        "\r\n",
        r"\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[",
        "\r\n",
        r"]*|\s*[",
        "\r\n",
        r"]+|\s+(?!\S)|\s+"
    )),
];
const TEKKEN: &[Pattern] = &[Pattern::Regex(concat!(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+",
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
))];
const GPT4O: &[Pattern] = &[Pattern::Regex(concat!(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+",
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*",
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
))];
const BLOOM: &[Pattern] = &[Pattern::Regex(
    " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+",
)];
const VIKING: &[Pattern] = &[
    Pattern::Regex(" ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+"),
    Pattern::Regex(r"\p{N}"),
];
const SEED_CODER: &[Pattern] = &[Pattern::Regex(concat!(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+",
    r"|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
))];
const BAILING: &[Pattern] = &[Pattern::Regex(concat!(
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
))];
const MINICPM5: &[Pattern] = &[
    Pattern::Regex(r"\p{N}{1,3}"),
    Pattern::Regex(concat!(
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+",
        r"|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )),
];

/// The configuration for a `tokenizer.ggml.pre` value (`None`: absent), or `None` when ward does
/// not know it.
pub(super) fn config(pre: Option<&str>) -> Option<PreConfig> {
    let c = |patterns, clean_spaces| PreConfig {
        patterns,
        ignore_merges: false,
        clean_spaces,
        add_bos: false,
    };
    let llama3 = PreConfig {
        ignore_merges: true,
        add_bos: true,
        ..c(LLAMA3, true)
    };
    Some(match pre.unwrap_or("default") {
        "default" => c(DEFAULT, true),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => llama3,
        "dbrx" | "smaug-bpe" => c(LLAMA3, true),
        "deepseek-llm" => c(DEEPSEEK_LLM, false),
        "deepseek-coder" => c(DEEPSEEK_CODER, false),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => c(DEEPSEEK_V3, false),
        "falcon" => c(FALCON, true),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4" => {
            c(GPT2, true)
        }
        "trillion" | "granite-docling" => c(GPT2, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            c(DIGITS_THEN_GPT2, true)
        }
        "smollm" | "command-r" => c(DIGITS_THEN_GPT2, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open"
        | "grok-2" => c(QWEN2, false),
        "stablelm2" | "megrez" => c(QWEN2, true),
        "tekken" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..c(TEKKEN, false)
        },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => c(GPT4O, false),
        "poro-chat" => c(BLOOM, false),
        "bloom" | "gpt3-finnish" => c(BLOOM, true),
        "viking" => c(VIKING, false),
        "seed-coder" => c(SEED_CODER, false),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => c(BAILING, false),
        "minicpm5" => PreConfig {
            ignore_merges: true,
            ..c(MINICPM5, true)
        },
        _ => return None,
    })
}
