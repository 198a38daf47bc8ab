//! Turning a stream of tokens into a stream of text: incremental detokenization that never
//! emits a broken UTF-8 character, and stop strings matched across token boundaries.

/// Accumulates token bytes and releases only complete UTF-8 characters.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text that is now complete. Invalid sequences become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix was just validated.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
    }

    /// Releases whatever is left at the end of generation.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Finds stop strings in generated text, holding back any tail that could still become one.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to do with text after stop-string matching.
#[derive(Debug, PartialEq, Eq)]
pub enum StopResult {
    /// Emit this text and go on.
    Continue(String),
    /// Emit this text (everything before the stop string) and finish.
    Stop(String),
}

impl StopMatcher {
    /// A matcher for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopResult {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopResult::Continue(std::mem::take(&mut self.held));
        }
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopResult::Stop(out);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.held.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopResult::Continue(out)
    }

    /// Releases held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens() {
        let mut s = Utf8Stream::default();
        let bytes = "é🔥".as_bytes();
        let mut out = String::new();
        for b in bytes {
            let part = s.push(&[*b]);
            assert!(part.is_empty() || part == "é" || part == "🔥");
            out += &part;
        }
        out += &s.finish();
        assert_eq!(out, "é🔥");
    }

    #[test]
    fn invalid_bytes_replaced() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{FFFD}b");
    }

    #[test]
    fn stop_across_boundaries() {
        let mut m = StopMatcher::new(&["</end>".to_string()]);
        assert_eq!(m.push("hello </"), StopResult::Continue("hello ".into()));
        assert_eq!(m.push("en"), StopResult::Continue(String::new()));
        assert_eq!(m.push("d> tail"), StopResult::Stop("".into()));
        let mut m = StopMatcher::new(&["ab".to_string()]);
        assert_eq!(m.push("xa"), StopResult::Continue("x".into()));
        assert_eq!(m.push("c"), StopResult::Continue("ac".into()));
        assert_eq!(m.finish(), "");
    }
}
