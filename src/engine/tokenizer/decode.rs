//! Detokenization: the bytes each token stands for, and whole-sequence decoding with llama.cpp's
//! rules (SentencePiece's leading-space removal, BOS/EOS skipping, and the
//! `clean_up_tokenization_spaces` passes of BPE vocabularies that ask for them).

use super::unicode::char_byte;
use super::vocab::attr;
use super::{Model, Tokenizer};

impl Tokenizer {
    /// The bytes of one token; control and unknown tokens render as their text only when
    /// `special` is set.
    pub(super) fn piece_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        if id as usize >= self.vocab.len() {
            return Vec::new();
        }
        let a = self.vocab.attr(id);
        let text = self.vocab.piece(id);
        if a & (attr::UNKNOWN | attr::CONTROL) != 0 && !special {
            return Vec::new();
        }
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        if a & attr::NORMAL != 0 {
            return match self.model {
                Model::Spm(_) => text.replace('▁', " ").into_bytes(),
                Model::Bpe(_) => byte_decode(text),
            };
        }
        if a & attr::BYTE != 0 {
            return text
                .get(3..5)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|b| vec![b])
                .unwrap_or_default();
        }
        Vec::new()
    }

    /// Decodes a token sequence to bytes (see [`Tokenizer::decode`]).
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.options.add_space_prefix;
        if skip_special
            && self.options.add_bos
            && ids.first().is_some_and(|&f| Some(f) == self.ids.bos)
        {
            ids = &ids[1..];
            remove_space = false;
        }
        if skip_special
            && self.options.add_eos
            && ids.last().is_some_and(|&l| Some(l) == self.ids.eos)
        {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::new();
        for &id in ids {
            let piece = self.piece_bytes(id, !skip_special);
            let skip = usize::from(remove_space && piece.first() == Some(&b' '));
            out.extend_from_slice(&piece[skip..]);
            remove_space = false;
        }
        if self.options.clean_spaces {
            clean_spaces(&mut out);
        }
        out
    }
}

/// GPT-2 byte-level characters back to bytes; a character outside the mapping is spelled out
/// the way llama.cpp does (`[UNK_BYTE_0x..]`).
fn byte_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// llama.cpp's three in-place clean-up passes: drop the space before `?!.,`, around a lone
/// apostrophe, and before `'s`, `'m`, `'re`, `'ve`. Ported with their in-place quirks.
fn clean_spaces(text: &mut Vec<u8>) {
    // Pass 1: " ?", " !", " .", " ,".
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    // Pass 2: " ' " becomes "'".
    let n = total;
    total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    // Pass 3: " 's", " 'm", " 're", " 've" lose their space.
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            let x2 = text.get(i + 2).copied().filter(|_| i + 2 < n);
            let drop = matches!(x1, b's' | b'm')
                || matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e')));
            if drop {
                total -= 1;
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn clean_up_matches_llama_cpp_passes() {
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("it ' s"), "it's");
        assert_eq!(clean("they 're here , we 've"), "they're here, we've");
        assert_eq!(clean("don 't I 'll"), "don 't I 'll");
        assert_eq!(clean(""), "");
        assert_eq!(clean(" ."), ".");
    }
}
