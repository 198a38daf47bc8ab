//! One regex splitting pass, matched the way llama.cpp matches its non-hand-written patterns.
//!
//! llama.cpp runs them on `std::regex`, which knows no Unicode classes. A pattern that uses
//! `\p{N}`, `\p{L}`, `\p{P}`, `\p{M}`, `\p{S}` (or a letter subclass) is therefore matched against
//! a *collapsed* text in which ASCII stays as is, non-ASCII whitespace becomes `\x0B`, and every
//! other non-ASCII code point becomes one stand-in per category; each `\p{X}` in the pattern is
//! rewritten to "the stand-in for X plus the ASCII members of X". Other patterns match the text
//! itself, with non-ASCII whitespace likewise replaced by `\x0B`. Reproducing this (rather than
//! matching real Unicode classes) is what keeps tokenization identical to llama.cpp's.

use fancy_regex::Regex;

use super::pretokenize::compile;
use super::unicode::{
    COLLAPSED_LETTER, COLLAPSED_MARK, COLLAPSED_NUMBER, COLLAPSED_PUNCTUATION, COLLAPSED_SYMBOL,
    Flags,
};
use crate::engine::error::{EngineError, Result};

/// A compiled splitting pattern.
pub(super) struct RegexStep {
    re: Regex,
    collapsed: bool,
}

/// The character-class body standing for `\p{..}` in a collapsed pattern, if `name` is one
/// llama.cpp collapses.
fn class_body(name: &str) -> Option<String> {
    let (stand_in, ascii) = match name {
        "N" => (COLLAPSED_NUMBER, "0-9"),
        "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => (COLLAPSED_LETTER, "A-Za-z"),
        "P" => (COLLAPSED_PUNCTUATION, r"!-#%-*,-/:;?@\[-\]_\{\}"),
        "M" => (COLLAPSED_MARK, ""),
        "S" => (COLLAPSED_SYMBOL, r"\$\+<->\^`\|~"),
        _ => return None,
    };
    Some(format!("{stand_in}{ascii}"))
}

/// Rewrites a pattern's `\p{..}` classes for collapsed text; `None` when it has none.
fn collapse_pattern(re: &str) -> Result<Option<String>> {
    let b = re.as_bytes();
    let mut out = String::with_capacity(re.len() * 2);
    let mut inside = false;
    let mut any = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let escaped = i > 0 && b[i - 1] == b'\\';
        if c == b'[' && !escaped {
            inside = true;
        } else if c == b']' && inside && !escaped {
            inside = false;
        } else if c == b'\\' && b.get(i + 1) == Some(&b'p') && b.get(i + 2) == Some(&b'{') {
            let close = re[i..].find('}').map(|j| i + j);
            if let Some(body) = close.and_then(|j| class_body(&re[i + 3..j])) {
                if !inside {
                    out.push('[');
                }
                out.push_str(&body);
                if !inside {
                    out.push(']');
                }
                any = true;
                i = close.unwrap_or(i) + 1;
                continue;
            }
        }
        let ch = re[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    if any && !re.is_ascii() {
        return Err(EngineError::Tokenizer(format!(
            "pre-tokenizer regex `{re}` mixes Unicode classes and non-ASCII characters"
        )));
    }
    Ok(any.then_some(out))
}

impl RegexStep {
    /// Compiles a pattern given in llama.cpp's syntax.
    pub fn new(re: &str) -> Result<Self> {
        Ok(match collapse_pattern(re)? {
            Some(collapsed) => Self {
                re: compile(&collapsed)?,
                collapsed: true,
            },
            None => Self {
                re: compile(re)?,
                collapsed: false,
            },
        })
    }

    /// The text this pattern is matched against, and the byte offset of each code point in it.
    fn subject(&self, cps: &[char], cls: &[Flags]) -> (String, Vec<usize>) {
        let mut s = String::with_capacity(cps.len());
        let mut offsets = Vec::with_capacity(cps.len() + 1);
        for (&c, &f) in cps.iter().zip(cls) {
            offsets.push(s.len());
            s.push(if c.is_ascii() {
                c
            } else if self.collapsed {
                f.collapsed()
            } else if f.is_whitespace() {
                '\u{0B}'
            } else {
                c
            });
        }
        offsets.push(s.len());
        (s, offsets)
    }

    /// Splits each piece `(start, end)` (code-point indices) at this pattern's matches,
    /// keeping the text between matches as pieces too.
    pub fn split(
        &self,
        cps: &[char],
        cls: &[Flags],
        pieces: &[(usize, usize)],
        out: &mut Vec<(usize, usize)>,
    ) {
        let (subject, offsets) = self.subject(cps, cls);
        let index = |byte: usize| offsets.partition_point(|&o| o < byte);
        for &(a, b) in pieces {
            let base = offsets[a];
            let mut last = a;
            for m in self.re.find_iter(&subject[base..offsets[b]]) {
                // A match error (backtracking limit) leaves the rest of the piece whole.
                let Ok(m) = m else { break };
                if m.start() == m.end() {
                    continue;
                }
                let (s, e) = (index(base + m.start()), index(base + m.end()));
                if s > last {
                    out.push((last, s));
                }
                out.push((s, e));
                last = e;
            }
            if last < b {
                out.push((last, b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_unicode_classes_like_llama_cpp() {
        let got = collapse_pattern(r"[^\r\n\p{L}\p{N}]?\p{L}+")
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            format!(
                r"[^\r\n{COLLAPSED_LETTER}A-Za-z{COLLAPSED_NUMBER}0-9]?[{COLLAPSED_LETTER}A-Za-z]+"
            )
        );
        assert_eq!(collapse_pattern("[0-9][0-9][0-9]").unwrap(), None);
        assert!(collapse_pattern(r"\p{N}é").is_err());
    }

    #[test]
    fn splits_keeping_text_between_matches() {
        let step = RegexStep::new(r"\p{N}").unwrap();
        let text = "ab12٣c";
        let cps: Vec<char> = text.chars().collect();
        let cls: Vec<Flags> = cps
            .iter()
            .map(|&c| super::super::unicode::flags(c as u32))
            .collect();
        let mut out = Vec::new();
        step.split(&cps, &cls, &[(0, cps.len())], &mut out);
        assert_eq!(out, vec![(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]);
    }
}
