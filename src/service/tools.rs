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
        match call_from_json(body.trim()) {
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

/// A Lark grammar (llguidance) that forces one call (or several when `parallel`) to one of
/// `functions` (name, parameters schema).
pub fn forced_call_grammar(functions: &[(String, Option<Value>)], parallel: bool) -> String {
    let alts: Vec<String> = functions
        .iter()
        .map(|(name, params)| {
            let schema = json!({
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": params.clone().unwrap_or(json!({"type": "object"})),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            });
            format!("%json {schema}")
        })
        .collect();
    let rep = if parallel { "+" } else { "" };
    format!(
        "start: (\"{OPEN}\\n\" call \"\\n{CLOSE}\"){rep}\ncall: {}\n",
        alts.join(" | ")
    )
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
        let g = forced_call_grammar(
            &[
                ("a".into(), None),
                ("b".into(), Some(json!({"type":"object"}))),
            ],
            false,
        );
        assert!(g.contains("\"const\":\"a\"") && g.contains("\"const\":\"b\""));
    }
}
