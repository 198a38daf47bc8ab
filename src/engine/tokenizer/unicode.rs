//! Unicode code-point classes and the GPT-2 byte↔character mapping, as llama.cpp's
//! pre-tokenizers see them (general categories from Unicode 15.1, llama.cpp's whitespace set).

use std::sync::OnceLock;

use super::unicode_table::RANGES;

/// The class bits of one code point; `Flags::NONE` stands for "outside the text".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Flags(u16);

impl Flags {
    /// No bits at all: what a position past the end of a fragment reads as.
    pub const NONE: Flags = Flags(0);
    const UNDEFINED: u16 = 0x01;
    const NUMBER: u16 = 0x02;
    const LETTER: u16 = 0x04;
    const MARK: u16 = 0x10;
    const PUNCTUATION: u16 = 0x20;
    const SYMBOL: u16 = 0x40;
    const CATEGORIES: u16 = 0xff;
    const WHITESPACE: u16 = 0x100;

    /// `\p{L}`.
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }

    /// `\p{N}`.
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }

    /// `\s` (Unicode White_Space).
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }

    /// Whether any bit is set, i.e. the position holds a code point.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// The single-byte stand-in llama.cpp's "collapsed" regex matching uses for a non-ASCII
    /// code point: whitespace, then one marker per category (N, L, P, M, S), else a fallback.
    pub fn collapsed(self) -> char {
        if self.is_whitespace() {
            return '\u{0B}';
        }
        match self.0 & Self::CATEGORIES {
            Self::NUMBER => COLLAPSED_NUMBER,
            Self::LETTER => COLLAPSED_LETTER,
            Self::PUNCTUATION => COLLAPSED_PUNCTUATION,
            Self::MARK => COLLAPSED_MARK,
            Self::SYMBOL => COLLAPSED_SYMBOL,
            _ => COLLAPSED_OTHER,
        }
    }
}

/// Private-use stand-ins for categories in collapsed text (never produced by real input, since
/// every non-ASCII code point is replaced before matching).
pub(super) const COLLAPSED_OTHER: char = '\u{E0D0}';
pub(super) const COLLAPSED_NUMBER: char = '\u{E0D1}';
pub(super) const COLLAPSED_LETTER: char = '\u{E0D2}';
pub(super) const COLLAPSED_PUNCTUATION: char = '\u{E0D3}';
pub(super) const COLLAPSED_MARK: char = '\u{E0D4}';
pub(super) const COLLAPSED_SYMBOL: char = '\u{E0D5}';

fn is_whitespace_cp(cp: u32) -> bool {
    matches!(cp, 0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A)
        || matches!(cp, 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000)
}

fn category_by_search(cp: u32) -> u8 {
    let i = RANGES.partition_point(|&r| (r >> 8) <= cp);
    // RANGES[0] starts at 0, so i >= 1.
    (RANGES[i.saturating_sub(1)] & 0xff) as u8
}

fn bmp_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![0u8; 0x10000];
        for (i, w) in RANGES.iter().enumerate() {
            let start = (w >> 8) as usize;
            if start >= table.len() {
                break;
            }
            let end = RANGES
                .get(i + 1)
                .map_or(table.len(), |n| ((n >> 8) as usize).min(table.len()));
            table[start..end].fill((w & 0xff) as u8);
        }
        table
    })
}

/// The class bits of a code point.
pub(super) fn flags(cp: u32) -> Flags {
    let category = match bmp_table().get(cp as usize) {
        Some(&c) => c,
        None if cp < 0x110000 => category_by_search(cp),
        None => return Flags(Flags::UNDEFINED),
    };
    let ws = if is_whitespace_cp(cp) {
        Flags::WHITESPACE
    } else {
        0
    };
    Flags(category as u16 | ws)
}

/// Whether a byte is printable in GPT-2's byte encoding (it then stands for itself).
const fn byte_is_direct(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if byte_is_direct(b as u8) {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        out[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    out
}

/// GPT-2's byte-level encoding: each byte as the printable character that stands for it.
pub(super) static BYTE_CHARS: [char; 256] = build_byte_chars();

const fn build_indirect() -> [u8; 68] {
    let mut out = [0u8; 68];
    let mut n = 0usize;
    let mut b = 0usize;
    while b < 256 {
        if !byte_is_direct(b as u8) && n < 68 {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    out
}

static INDIRECT: [u8; 68] = build_indirect();

/// The byte a GPT-2 byte-encoding character stands for, if it is one.
pub(super) fn char_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && byte_is_direct(cp as u8) {
        return Some(cp as u8);
    }
    cp.checked_sub(256)
        .and_then(|i| INDIRECT.get(i as usize))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_match_well_known_code_points() {
        assert!(flags('a' as u32).is_letter());
        assert!(flags('é' as u32).is_letter());
        assert!(flags('語' as u32).is_letter());
        assert!(flags('7' as u32).is_number());
        assert!(flags('½' as u32).is_number());
        assert!(flags(0x1D7CE).is_number()); // MATHEMATICAL BOLD DIGIT ZERO, outside the BMP
        assert!(flags(' ' as u32).is_whitespace());
        assert!(flags(0x3000).is_whitespace());
        assert!(!flags(0x200B).is_whitespace()); // zero width space is a format char
        assert_eq!(flags('!' as u32).collapsed(), COLLAPSED_PUNCTUATION);
        assert_eq!(flags('$' as u32).collapsed(), COLLAPSED_SYMBOL);
        assert_eq!(flags(0x0301).collapsed(), COLLAPSED_MARK);
        assert_eq!(flags(0xE000).collapsed(), COLLAPSED_OTHER);
        assert_eq!(flags(0x10FFFF + 1), Flags(Flags::UNDEFINED));
        assert!(!Flags::NONE.any());
    }

    #[test]
    fn byte_encoding_round_trips() {
        assert_eq!(BYTE_CHARS[b'a' as usize], 'a');
        assert_eq!(BYTE_CHARS[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_CHARS[b'\n' as usize], 'Ċ');
        for b in 0..=255u8 {
            assert_eq!(char_byte(BYTE_CHARS[b as usize]), Some(b));
        }
        assert_eq!(char_byte('語'), None);
    }
}
