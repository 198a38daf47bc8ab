//! Server-sent events as OpenAI-compatible servers stream them, parsed by hand so that the
//! benchmark sees each event the moment its bytes arrive.
//!
//! [`SseParser`] follows the WHATWG event-stream rules that matter here: lines end in `\n`,
//! `\r\n` or `\r` (possibly split across reads), lines starting with `:` are comments such as
//! `: keep-alive`, `data:` lines accumulate and a blank line dispatches the event.
//! [`ChatChunk::parse`] reads one event's data as a `chat.completion.chunk`.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// An incremental event-stream parser: feed it bytes as they arrive, in any split.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: String,
    has_data: bool,
    event: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes` and appends every event they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        self.buf.extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.buf);
        let mut start = 0;
        let mut i = 0;
        while i < buf.len() {
            match buf[i] {
                b'\n' => {
                    self.line(&buf[start..i], out);
                    start = i + 1;
                }
                // A `\r` at the end of the buffer may be the first half of `\r\n`: wait.
                b'\r' if i + 1 == buf.len() => break,
                b'\r' => {
                    self.line(&buf[start..i], out);
                    if buf[i + 1] == b'\n' {
                        i += 1;
                    }
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        self.buf = buf[start..].to_vec();
    }

    /// Ends the stream: an unterminated last line and a last event without its blank line are
    /// still delivered, since servers often close the connection right after `data: [DONE]`.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.strip_suffix(b"\r").unwrap_or(&rest);
        if !rest.is_empty() {
            self.line(rest, out);
        }
        self.line(b"", out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            let event = self.event.take();
            if std::mem::take(&mut self.has_data) {
                let mut data = std::mem::take(&mut self.data);
                data.pop(); // the newline after the last data line
                out.push(Event { event, data });
            }
            return;
        }
        let line = String::from_utf8_lossy(line);
        let line = line.strip_prefix('\u{feff}').unwrap_or(&line);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
    }
}

/// What one event of a streamed chat completion carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatChunk {
    /// The `[DONE]` sentinel.
    pub done: bool,
    /// Generated text in this chunk, over all choices (`delta.content`, and the reasoning
    /// fields that some servers stream separately).
    pub text: String,
    /// The first `finish_reason` among the choices.
    pub finish_reason: Option<String>,
    /// `usage.completion_tokens`, on the final usage chunk.
    pub completion_tokens: Option<u64>,
    /// The message of an `{"error": ...}` event.
    pub error: Option<String>,
}

impl ChatChunk {
    /// Parses one event's data.
    pub fn parse(data: &str) -> Result<Self, String> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Self {
                done: true,
                ..Self::default()
            });
        }
        let v: serde_json::Value = serde_json::from_str(data).map_err(|e| {
            let head: String = data.chars().take(80).collect();
            format!("not a JSON chunk ({e}): {head}")
        })?;
        let mut chunk = Self::default();
        if let Some(e) = v.get("error") {
            let msg = e.get("message").and_then(|m| m.as_str());
            chunk.error = Some(msg.map_or_else(|| e.to_string(), str::to_string));
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            for key in ["content", "reasoning_content", "reasoning"] {
                if let Some(s) = choice["delta"][key].as_str() {
                    chunk.text.push_str(s);
                }
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                chunk.finish_reason.get_or_insert_with(|| r.to_string());
            }
        }
        chunk.completion_tokens = v["usage"]["completion_tokens"].as_u64();
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<Event> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain([&stream.len()]) {
            p.feed(&stream[last..c], &mut out);
            last = c;
        }
        p.finish(&mut out);
        out
    }

    fn data(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    const STREAM: &[u8] = b": keep-alive\n\ndata: {\"a\":1}\n\n:ping\r\ndata: {\"b\":2}\r\n\r\nevent: x\ndata: line1\ndata:line2\n\ndata: [DONE]\n\n";

    #[test]
    fn events_survive_every_split() {
        let whole = parse_in_pieces(STREAM, &[]);
        assert_eq!(
            data(&whole),
            ["{\"a\":1}", "{\"b\":2}", "line1\nline2", "[DONE]"]
        );
        assert_eq!(whole[2].event.as_deref(), Some("x"));
        assert_eq!(whole[1].event, None);
        for cut in 0..STREAM.len() {
            assert_eq!(
                parse_in_pieces(STREAM, &[cut]),
                whole,
                "split at byte {cut}"
            );
        }
        let bytewise: Vec<usize> = (1..STREAM.len()).collect();
        assert_eq!(parse_in_pieces(STREAM, &bytewise), whole);
    }

    #[test]
    fn comments_and_blank_lines_dispatch_nothing() {
        let ev = parse_in_pieces(b": keep-alive\n\n\n\n: keep-alive\r\r", &[]);
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn lone_cr_ends_lines_and_eof_flushes() {
        let ev = parse_in_pieces(b"data: one\r\rdata: [DONE]", &[]);
        assert_eq!(data(&ev), ["one", "[DONE]"]);
        // A `\r` at the end of a read is held back until the next byte shows what it is.
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: a\r", &mut out);
        p.feed(b"\n", &mut out);
        assert!(out.is_empty());
        p.feed(b"\r\n", &mut out);
        assert_eq!(data(&out), ["a"]);
    }

    #[test]
    fn chat_chunks() {
        let c = ChatChunk::parse(r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#).unwrap();
        assert_eq!(c.text, "Hi");
        let stop = r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#;
        assert_eq!(
            ChatChunk::parse(stop).unwrap().finish_reason.as_deref(),
            Some("length")
        );
        assert_eq!((c.done, c.completion_tokens), (false, None));
        let role = r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(ChatChunk::parse(role).unwrap().text, "");
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":17}}"#;
        let c = ChatChunk::parse(usage).unwrap();
        assert_eq!((c.text.as_str(), c.completion_tokens), ("", Some(17)));
        let think = r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#;
        assert_eq!(ChatChunk::parse(think).unwrap().text, "hmm");
        assert!(ChatChunk::parse(" [DONE] ").unwrap().done);
        let err = ChatChunk::parse(r#"{"error":{"message":"boom","type":"x"}}"#).unwrap();
        assert_eq!(err.error.as_deref(), Some("boom"));
        assert!(
            ChatChunk::parse("{nope")
                .unwrap_err()
                .contains("not a JSON chunk")
        );
    }
}
