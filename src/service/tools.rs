//! Tool calling: finding tool calls in a model's output, and the grammar that forces one when
//! the client requires it.
//!
//! ward uses the Hermes/Qwen convention that most open chat templates teach their models:
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call. A bare JSON
//! object with `name` and `arguments` at the start of the answer is accepted as well.

use serde_json::{Value, json};

/// One parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    /// Function name.
    pub name: String,
    /// Arguments as JSON text.
    pub arguments: String,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Splits generated text into leading content and tool calls (empty when there are none).
pub fn parse_calls(text: &str) -> (String, Vec<ParsedCall>) {
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        content.push_str(&rest[..at]);
        let body_start = at + OPEN.len();
        let (body, next) = match rest[body_start..].find(CLOSE) {
            Some(end) => (
                &rest[body_start..body_start + end],
                &rest[body_start + end + CLOSE.len()..],
            ),
            None => (&rest[body_start..], ""),
        };
        match call_from_json(without_partial_close(body.trim())) {
            // A model that repeats a call verbatim means it once.
            Some(c) if calls.contains(&c) => {}
            Some(c) => calls.push(c),
            None => content.push_str(&rest[at..body_start + body.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    if calls.is_empty() {
        let t = text.trim();
        if t.starts_with('{')
            && let Some(c) = call_from_json(t)
        {
            return (String::new(), vec![c]);
        }
    }
    (content.trim().to_string(), calls)
}

/// A call body cut off by `max_tokens` inside its closing tag, without the partial tag.
fn without_partial_close(body: &str) -> &str {
    (1..CLOSE.len())
        .rev()
        .find_map(|n| body.strip_suffix(&CLOSE[..n]))
        .map_or(body, str::trim_end)
}

fn call_from_json(body: &str) -> Option<ParsedCall> {
    let v: Value = serde_json::from_str(body).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(json!({}));
    let arguments = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(ParsedCall { name, arguments })
}

/// Whether streamed text so far may still turn into a tool call (so it must be held back).
pub fn may_be_call(text_so_far: &str) -> bool {
    let t = text_so_far.trim_start();
    t.is_empty() || OPEN.starts_with(t) || t.starts_with(OPEN) || t.starts_with('{')
}

/// A function that a forced call may name.
#[derive(Debug, Clone, Copy)]
pub struct CallSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// JSON schema of its arguments (none: it takes no arguments).
    pub parameters: Option<&'a Value>,
    /// OpenAI's `strict`: schema keywords that cannot be enforced are refused, not ignored.
    pub strict: bool,
}

/// A Lark grammar (llguidance) that forces one call to one of `functions` (or, when `parallel`,
/// up to one call per function), in the Hermes shape [`parse_calls`] reads. Arguments follow the function's
/// schema with its objects closed (no properties beyond those declared, as OpenAI's strict mode
/// does) and JSON written as Python's `json.dumps` does, so a small model cannot wander off into
/// invented keys or blank space.
pub fn forced_call_grammar(functions: &[CallSpec<'_>], parallel: bool) -> String {
    let alts: Vec<String> = functions
        .iter()
        .map(|f| {
            let arguments = match f.parameters {
                Some(p) => closed(p),
                None => json!({"type": "object", "properties": {}, "additionalProperties": false}),
            };
            let schema = json!({
                "type": "object",
                "properties": {"name": {"const": f.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": false,
                "x-guidance": {
                    "whitespace_flexible": false,
                    "item_separator": ", ",
                    "key_separator": ": ",
                    "lenient": !f.strict,
                },
            });
            format!("%json {schema}")
        })
        .collect();
    // Several calls only when parallel calls are allowed, and at most one per function offered:
    // a small model asked for "at least one call" may otherwise repeat it until `max_tokens`.
    let max_calls = if parallel { functions.len().max(1) } else { 1 };
    let start = (1..max_calls).fold("block".to_string(), |inner, _| {
        format!("block (\"\\n\" {inner})?")
    });
    format!(
        "start: {start}\nblock: \"{OPEN}\\n\" call \"\\n{CLOSE}\"\ncall: {}\n",
        alts.join(" | ")
    )
}

/// A copy of a JSON schema whose object schemas that list `properties` and say nothing about
/// others allow no others. `allOf` parts are left alone (closing them would contradict).
fn closed(schema: &Value) -> Value {
    fn close(s: &mut Value) {
        let Value::Object(o) = s else { return };
        let open = [
            "additionalProperties",
            "patternProperties",
            "allOf",
            "unevaluatedProperties",
        ];
        if o.get("properties").is_some_and(Value::is_object)
            && !open.iter().any(|k| o.contains_key(*k))
        {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
        for key in ["properties", "$defs", "definitions"] {
            if let Some(Value::Object(m)) = o.get_mut(key) {
                m.values_mut().for_each(close);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = o.get_mut(key) {
                close(v);
            }
        }
        for key in ["anyOf", "oneOf", "prefixItems"] {
            if let Some(Value::Array(a)) = o.get_mut(key) {
                a.iter_mut().for_each(close);
            }
        }
    }
    let mut s = schema.clone();
    close(&mut s);
    s
}

/// A system-prompt paragraph describing the tools, for templates that do not render `tools`.
pub fn tools_system_prompt(tools: &[Value]) -> String {
    let list: Vec<String> = tools.iter().map(|t| t.to_string()).collect();
    format!(
        "You can call functions. Available functions (JSON schemas):\n{}\n\
         To call a function, answer with <tool_call>{{\"name\": NAME, \"arguments\": {{...}}}}</tool_call>.",
        list.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tagged_calls() {
        let (c, calls) = parse_calls(
            "Sure.<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"ip\": \"1.2.3.4\"}}\n</tool_call><tool_call>{\"name\":\"b\",\"arguments\":\"{}\"}</tool_call>",
        );
        assert_eq!(c, "Sure.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "lookup");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].arguments).unwrap()["ip"],
            "1.2.3.4"
        );
        assert_eq!(calls[1].arguments, "{}");
    }

    #[test]
    fn repeated_and_cut_off_calls() {
        let one = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let (_, calls) = parse_calls(&format!("{one}\n{one}"));
        assert_eq!(calls.len(), 1);
        let (c, calls) = parse_calls("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_");
        assert_eq!((c.as_str(), calls.len()), ("", 1));
    }

    #[test]
    fn bare_json_and_plain_text() {
        let (_, calls) = parse_calls(" {\"name\": \"f\", \"arguments\": {}}");
        assert_eq!(calls[0].name, "f");
        let (c, calls) = parse_calls("no calls here {not json");
        assert!(calls.is_empty());
        assert_eq!(c, "no calls here {not json");
    }

    #[test]
    fn hold_back() {
        assert!(may_be_call("  <tool"));
        assert!(!may_be_call("Hello"));
    }

    #[test]
    fn grammar_mentions_every_function() {
        let b = json!({"type": "object"});
        let spec = |name, parameters| CallSpec {
            name,
            parameters,
            strict: false,
        };
        let g = forced_call_grammar(&[spec("a", None), spec("b", Some(&b))], false);
        assert!(g.contains("\"const\":\"a\"") && g.contains("\"const\":\"b\""));
        assert!(g.starts_with("start: block\n"), "one call only: {g}");
        let g = forced_call_grammar(&[spec("a", None), spec("b", None), spec("c", None)], true);
        assert!(
            g.starts_with("start: block (\"\\n\" block (\"\\n\" block)?)?\n"),
            "{g}"
        );
        let g = forced_call_grammar(&[spec("a", None)], true);
        assert!(g.starts_with("start: block\n"), "{g}");
    }

    #[test]
    fn closes_declared_objects_only() {
        let s = json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "b": {"type": "object", "additionalProperties": {"type": "string"}},
            "c": {"type": "array", "items": {"type": "object", "properties": {}}},
            "d": {"allOf": [{"properties": {"y": {}}}]}}});
        let c = closed(&s);
        assert_eq!(c["additionalProperties"], false);
        assert_eq!(c["properties"]["a"]["additionalProperties"], false);
        assert_eq!(
            c["properties"]["b"]["additionalProperties"],
            json!({"type": "string"})
        );
        assert_eq!(c["properties"]["c"]["items"]["additionalProperties"], false);
        assert!(
            c["properties"]["d"]["allOf"][0]
                .get("additionalProperties")
                .is_none()
        );
    }
}
