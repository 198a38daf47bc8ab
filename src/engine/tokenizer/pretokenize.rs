//! Pre-tokenization for byte-level BPE: splitting text into words with the list of patterns
//! llama.cpp associates with `tokenizer.ggml.pre`, applied in sequence (each pattern splits the
//! pieces left by the previous one, keeping the text between matches as pieces of its own).
//!
//! The common patterns (GPT-2, Llama-3, Qwen2) are hand-written scanners with llama.cpp's exact
//! quirks; the rest run on fancy-regex the way llama.cpp runs them on `std::regex`: patterns with
//! `\p{..}` classes match a "collapsed" copy of the text where every non-ASCII code point is one
//! stand-in character per category (see `regex_step`).

use fancy_regex::Regex;

use super::pre_config::Pattern;
use super::regex_step::RegexStep;
use super::unicode::{Flags, flags};
use crate::engine::error::{EngineError, Result};

enum Step {
    Gpt2,
    Llama3 { max_digits: usize },
    Regex(RegexStep),
}

/// A compiled pre-tokenizer: cheap to share, built once per tokenizer.
pub(super) struct PreTokenizer {
    steps: Vec<Step>,
}

impl PreTokenizer {
    /// Compiles the patterns of a configuration.
    pub fn new(patterns: &[Pattern]) -> Result<Self> {
        let steps = patterns
            .iter()
            .map(|p| match *p {
                Pattern::Gpt2 => Ok(Step::Gpt2),
                Pattern::Llama3 { max_digits } => Ok(Step::Llama3 { max_digits }),
                Pattern::Regex(re) => RegexStep::new(re).map(Step::Regex),
            })
            .collect::<Result<_>>()?;
        Ok(Self { steps })
    }

    /// Splits `text` into words, in order; the words concatenate back to `text`.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let cps: Vec<char> = text.chars().collect();
        let cls: Vec<Flags> = cps.iter().map(|&c| flags(c as u32)).collect();
        let mut bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        bounds.push(text.len());
        let mut pieces = vec![(0, cps.len())];
        for step in &self.steps {
            let mut out = Vec::with_capacity(pieces.len() * 2);
            match step {
                Step::Gpt2 => {
                    for &(a, b) in &pieces {
                        split_gpt2(&Scan::new(&cps, &cls, b), a, &mut out);
                    }
                }
                Step::Llama3 { max_digits } => {
                    for &(a, b) in &pieces {
                        split_llama3(&Scan::new(&cps, &cls, b), a, *max_digits, &mut out);
                    }
                }
                Step::Regex(re) => re.split(&cps, &cls, &pieces, &mut out),
            }
            pieces = out;
        }
        pieces
            .iter()
            .map(|&(a, b)| &text[bounds[a]..bounds[b]])
            .collect()
    }
}

/// A view of one piece `[.., end)` of the text, reading past the end as nothing.
struct Scan<'a> {
    cps: &'a [char],
    cls: &'a [Flags],
    end: usize,
}

impl<'a> Scan<'a> {
    fn new(cps: &'a [char], cls: &'a [Flags], end: usize) -> Self {
        Self { cps, cls, end }
    }

    fn cp(&self, pos: usize) -> Option<char> {
        (pos < self.end).then(|| self.cps[pos])
    }

    fn cl(&self, pos: usize) -> Flags {
        if pos < self.end {
            self.cls[pos]
        } else {
            Flags::NONE
        }
    }

    /// The length of an English contraction (`'s`, `'re`, ...) starting at `pos`, if any.
    fn contraction(&self, pos: usize, fold_case: bool) -> Option<usize> {
        if self.cp(pos) != Some('\'') {
            return None;
        }
        let low = |c: Option<char>| c.map(|c| if fold_case { c.to_ascii_lowercase() } else { c });
        let (a, b) = (low(self.cp(pos + 1)), low(self.cp(pos + 2)));
        match (a?, b) {
            ('s' | 't' | 'm' | 'd', _) => Some(2),
            ('r' | 'v', Some('e')) | ('l', Some('l')) => Some(3),
            _ => None,
        }
    }

    /// The length of the whitespace run at `pos`, and where its last `\r` or `\n` ends.
    fn whitespace_run(&self, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut last_newline_end = None;
        while self.cl(pos + n).is_whitespace() {
            if matches!(self.cp(pos + n), Some('\r' | '\n')) {
                last_newline_end = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, last_newline_end)
    }
}

fn is_other(f: Flags) -> bool {
    !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.any()
}

fn split_gpt2(s: &Scan, start: usize, out: &mut Vec<(usize, usize)>) {
    let mut prev = start;
    let mut emit = |end: usize| {
        if end > prev {
            out.push((prev, end));
        }
        prev = end;
    };
    let mut pos = start;
    while pos < s.end {
        if let Some(n) = s.contraction(pos, false) {
            pos += n;
            emit(pos);
            continue;
        }
        let space = s.cp(pos) == Some(' ');
        let mut f = if space { s.cl(pos + 1) } else { s.cl(pos) };
        let class: Option<fn(Flags) -> bool> = if f.is_letter() {
            Some(Flags::is_letter)
        } else if f.is_number() {
            Some(Flags::is_number)
        } else if is_other(f) {
            Some(is_other)
        } else {
            None
        };
        if let Some(class) = class {
            pos += usize::from(space);
            while class(f) {
                pos += 1;
                f = s.cl(pos);
            }
            emit(pos);
            continue;
        }
        let (ws, _) = s.whitespace_run(pos);
        if ws > 1 && s.cp(pos + ws).is_some() {
            pos += ws - 1; // \s+(?!\S): leave the last space to the next word
        } else if ws > 0 {
            pos += ws;
        } else {
            pos += 1;
        }
        emit(pos);
    }
}

fn split_llama3(s: &Scan, start: usize, max_digits: usize, out: &mut Vec<(usize, usize)>) {
    let mut prev = start;
    let mut emit = |end: usize| {
        if end > prev {
            out.push((prev, end));
        }
        prev = end;
    };
    let mut pos = start;
    while pos < s.end {
        if let Some(n) = s.contraction(pos, true) {
            pos += n;
            emit(pos);
            continue;
        }
        let cp = s.cp(pos);
        let f = s.cl(pos);
        let newline = matches!(cp, Some('\r' | '\n'));
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(newline || f.is_number()) && (f.is_letter() || s.cl(pos + 1).is_letter()) {
            pos += 1;
            while s.cl(pos).is_letter() {
                pos += 1;
            }
            emit(pos);
            continue;
        }
        // \p{N}{1,max_digits}
        if f.is_number() {
            let mut group = pos;
            while s.cl(pos).is_number() {
                pos += 1;
                if pos - group >= max_digits {
                    emit(pos);
                    group = pos;
                }
            }
            emit(pos);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*` (llama.cpp tests the first code point's flags here)
        let space = cp == Some(' ');
        let mut f2 = if space { s.cl(pos + 1) } else { f };
        if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f.any() {
            pos += usize::from(space);
            while is_other(f2) {
                pos += 1;
                f2 = s.cl(pos);
            }
            while matches!(s.cp(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            emit(pos);
            continue;
        }
        let (ws, last_newline_end) = s.whitespace_run(pos);
        if let Some(end) = last_newline_end {
            pos = end; // \s*[\r\n]+
        } else if ws > 1 && s.cp(pos + ws).is_some() {
            pos += ws - 1; // \s+(?!\S)
        } else if ws > 0 {
            pos += ws;
        } else {
            pos += 1;
        }
        emit(pos);
    }
}

/// Compiles a regex, naming it on failure.
pub(super) fn compile(re: &str) -> Result<Regex> {
    Regex::new(re).map_err(|e| EngineError::Tokenizer(format!("pre-tokenizer regex `{re}`: {e}")))
}
