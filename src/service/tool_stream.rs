//! Streaming a forced tool call as it is generated. The grammar of
//! [`super::tools::forced_call_grammar`] makes the model write
//! `<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>`, one block per call; this
//! reads that text piece by piece and reports each call's name as soon as it is complete and
//! then its arguments, fragment by fragment, as they are written.
//!
//! Text of any other shape stops the stream ([`CallStream::broken`]); the caller then falls
//! back to parsing the whole answer at the end.

/// What the text so far adds.
#[derive(Debug, Clone, PartialEq)]
pub enum CallPiece {
    /// A new call to the named function begins.
    Start(String),
    /// More of the current call's arguments (JSON text).
    Arguments(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before `<tool_call>`.
    Open,
    /// Inside the block, before the arguments value.
    Head,
    /// Inside the arguments value.
    Arguments {
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
    /// After the arguments value, before `</tool_call>`.
    Close,
    /// Every allowed call has been read; the rest is ignored.
    Done,
    /// The text does not have the expected shape.
    Broken,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Incremental reader of forced tool calls.
#[derive(Debug)]
pub struct CallStream {
    text: String,
    pos: usize,
    state: State,
    calls: usize,
    max_calls: usize,
}

impl CallStream {
    /// A reader that stops after `max_calls` calls.
    pub fn new(max_calls: usize) -> Self {
        Self {
            text: String::new(),
            pos: 0,
            state: State::Open,
            calls: 0,
            max_calls,
        }
    }

    /// Calls begun so far.
    pub fn calls(&self) -> usize {
        self.calls + usize::from(matches!(self.state, State::Arguments { .. } | State::Close))
    }

    /// Whether the text left the expected shape.
    pub fn broken(&self) -> bool {
        self.state == State::Broken
    }

    /// Whether the last call begun is complete (its block closed).
    pub fn complete(&self) -> bool {
        matches!(self.state, State::Open | State::Done) && self.calls > 0
    }

    /// Everything read so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Reads more text; returns what it completes.
    pub fn push(&mut self, fresh: &str) -> Vec<CallPiece> {
        self.text.push_str(fresh);
        let mut out = Vec::new();
        loop {
            let rest = &self.text[self.pos..];
            let before = (self.pos, self.state);
            match self.state {
                State::Open => {
                    let t = rest.trim_start();
                    if t.starts_with(OPEN) {
                        self.pos += rest.len() - t.len() + OPEN.len();
                        self.state = State::Head;
                    } else if !OPEN.starts_with(t) {
                        self.state = if self.calls > 0 {
                            State::Done
                        } else {
                            State::Broken
                        };
                    }
                }
                State::Head => match head(rest) {
                    Some(Ok((name, used))) => {
                        self.pos += used;
                        self.state = State::Arguments {
                            depth: 0,
                            in_string: false,
                            escaped: false,
                        };
                        out.push(CallPiece::Start(name));
                    }
                    Some(Err(())) => self.state = State::Broken,
                    None => {}
                },
                State::Arguments { .. } => {
                    let (state, used) = scan_arguments(self.state, rest);
                    if used > 0 {
                        out.push(CallPiece::Arguments(rest[..used].to_string()));
                        self.pos += used;
                    }
                    self.state = state;
                }
                State::Close => {
                    let t = rest.trim_start();
                    if let Some(after) = t.strip_prefix('}') {
                        let after_ws = after.trim_start();
                        if after_ws.starts_with(CLOSE) {
                            self.pos += rest.len() - after_ws.len() + CLOSE.len();
                            self.calls += 1;
                            let more = self.calls < self.max_calls;
                            self.state = if more { State::Open } else { State::Done };
                        } else if !CLOSE.starts_with(after_ws) {
                            self.state = State::Broken;
                        }
                    } else if !t.is_empty() {
                        self.state = State::Broken;
                    }
                }
                State::Done | State::Broken => {}
            }
            if (self.pos, self.state) == before {
                return out;
            }
        }
    }
}

/// Reads argument text up to the end of the value: the state after it and the bytes used.
fn scan_arguments(state: State, rest: &str) -> (State, usize) {
    let State::Arguments {
        mut depth,
        mut in_string,
        mut escaped,
    } = state
    else {
        return (state, 0);
    };
    for (i, c) in rest.char_indices() {
        if depth == 0 && c != '{' {
            if !c.is_whitespace() {
                // Arguments that are not an object (a JSON string, say): not this shape.
                return (State::Broken, 0);
            }
            continue;
        }
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (true, false, _) => {}
            (false, _, '"') => in_string = true,
            (false, _, '{' | '[') => depth += 1,
            (false, _, '}' | ']') => {
                depth -= 1;
                if depth == 0 {
                    return (State::Close, i + 1);
                }
            }
            _ => {}
        }
    }
    (
        State::Arguments {
            depth,
            in_string,
            escaped,
        },
        rest.len(),
    )
}

/// Reads `{"name": "NAME", "arguments": ` (any whitespace): the name and the bytes used;
/// `None` while the text may still become that, `Some(Err)` once it cannot.
fn head(text: &str) -> Option<Result<(String, usize), ()>> {
    let mut rest = text;
    for lit in ["{", "\"name\"", ":", "\""] {
        rest = match expect(rest, lit)? {
            Ok(r) => r,
            Err(()) => return Some(Err(())),
        };
    }
    let mut end = None;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let name: String = match serde_json::from_str(&format!("\"{}\"", &rest[..end])) {
        Ok(n) => n,
        Err(_) => return Some(Err(())),
    };
    rest = &rest[end + 1..];
    for lit in [",", "\"arguments\"", ":"] {
        rest = match expect(rest, lit)? {
            Ok(r) => r,
            Err(()) => return Some(Err(())),
        };
    }
    let rest = rest.trim_start();
    if rest.is_empty() {
        return None;
    }
    Some(Ok((name, text.len() - rest.len())))
}

/// After optional whitespace, `lit`: the text after it, `None` while too short to tell.
fn expect<'a>(text: &'a str, lit: &str) -> Option<Result<&'a str, ()>> {
    let t = text.trim_start();
    if let Some(after) = t.strip_prefix(lit) {
        Some(Ok(after))
    } else if lit.starts_with(t) {
        None
    } else {
        Some(Err(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut CallStream, text: &str, step: usize) -> Vec<CallPiece> {
        let chars: Vec<char> = text.chars().collect();
        chars
            .chunks(step)
            .flat_map(|c| s.push(&c.iter().collect::<String>()))
            .collect()
    }

    fn join(pieces: &[CallPiece]) -> (Vec<String>, Vec<String>) {
        let mut names = Vec::new();
        let mut args: Vec<String> = Vec::new();
        for p in pieces {
            match p {
                CallPiece::Start(n) => {
                    names.push(n.clone());
                    args.push(String::new());
                }
                CallPiece::Arguments(a) => args
                    .last_mut()
                    .expect("arguments after a start")
                    .push_str(a),
            }
        }
        (names, args)
    }

    #[test]
    fn streams_calls_in_any_chunking() {
        let text = "<tool_call>\n{\"name\": \"block_ip\", \"arguments\": {\"ip\": \"1.2.3.4\", \"note\": \"a } in \\\" text\", \"tags\": [{\"x\": 1}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
        for step in [1, 2, 3, 7, 1000] {
            let mut s = CallStream::new(2);
            let (names, args) = join(&feed(&mut s, text, step));
            assert_eq!(names, ["block_ip", "b"], "step {step}");
            let v: serde_json::Value = serde_json::from_str(&args[0]).unwrap();
            assert_eq!(v["note"], "a } in \" text");
            assert_eq!(args[1], "{}");
            assert!(s.complete() && !s.broken());
            assert_eq!(s.calls(), 2);
        }
    }

    #[test]
    fn stops_after_max_calls_and_on_other_shapes() {
        let one = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let mut s = CallStream::new(1);
        let (names, _) = join(&feed(&mut s, &format!("{one}\n{one}"), 5));
        assert_eq!(names, ["f"]);
        let mut s = CallStream::new(1);
        assert!(s.push("Sure, here").is_empty());
        assert!(s.broken());
        let mut s = CallStream::new(1);
        s.push("<tool_call>\n{\"arguments\": {}, \"name\": \"f\"}");
        assert!(s.broken() && s.calls() == 0);
        let mut s = CallStream::new(1);
        let (names, args) =
            join(&s.push("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"unfinish"));
        assert_eq!((names.len(), args[0].as_str()), (1, "{\"a\": \"unfinish"));
        assert!(!s.complete() && s.calls() == 1);
    }
}
