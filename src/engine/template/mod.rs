//! Chat templates: renders a GGUF's `tokenizer.chat_template` with minijinja the way Hugging Face
//! transformers' `apply_chat_template` does.
//!
//! The environment matches transformers': `trim_blocks` and `lstrip_blocks` on, the trailing
//! newline dropped, `{% break %}` / `{% continue %}`, the globals `raise_exception(msg)` and
//! `strftime_now(fmt)`, a `tojson` filter that is Python's `json.dumps` with `ensure_ascii=False`
//! (so `", "` and `": "` separators), Python's string, list and dict methods (`.strip()`,
//! `.split()`, `.items()`, ...) and Python's spelling when printing `None`, `True`, lists and
//! dicts. Templates see `messages`, `tools` (`none` without tools), `documents` (`none`),
//! `add_generation_prompt`, `bos_token`, `eos_token` and any extra variables given to
//! [`ChatTemplate::render_with`]. llama.cpp's extensions that real templates use are there too:
//! a `from_json` filter, and lists held in a `namespace()` that `.append()` and `.pop()`.
//!
//! Messages reach the template the way llama.cpp's `common/chat.cpp` hands them over: content is
//! always a string (`""` when absent, text parts joined with `"\n"`), and absent fields are left
//! undefined. Three things depend on the template and are probed once, when it is compiled, by
//! rendering small conversations (`caps.rs`):
//! - templates that read content only as a list of `{type, text}` parts get it in that shape;
//! - templates that drop or reject a leading system message get it merged into the next message,
//!   separated by `"\n"` (llama.cpp does the same);
//! - templates that read into tool-call arguments given as a mapping (through `tojson`, `.items()`
//!   or `dictsort`, as Llama 3.x, Qwen and Gemma do) get the arguments JSON parsed into one, as
//!   llama.cpp does; templates that print the arguments as they are get the JSON text.
//!
//! Models without a template use [`ChatTemplate::fallback`].

mod caps;
mod env;
mod message;
mod python;
mod value;

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use minijinja::{Environment, Error, Value};

use crate::engine::error::{EngineError, Result};

pub use message::{ChatMessage, ContentPart, FunctionCall, MessageContent, ToolCall};

use caps::Caps;
use value::OrderedMap;

/// The name the template is registered under inside its environment.
const NAME: &str = "chat_template";

/// The source of [`ChatTemplate::fallback`].
const FALLBACK_SOURCE: &str = r#"
{%- if tools -%}{{- 'Tools: ' ~ (tools | tojson) ~ '\n' -}}{%- endif -%}
{%- for message in messages -%}
{{- (message.role | capitalize) ~ ': ' ~ message.content -}}
{%- for call in message.tool_calls or [] -%}
{{- '\n' ~ ({'name': call.function.name, 'arguments': call.function.arguments} | tojson) -}}
{%- endfor -%}
{{- '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"#;

/// A compiled chat template together with the special-token strings it may print.
/// Cheap to share: it is `Send + Sync`, and rendering does not mutate it.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    caps: Caps,
    fallback: bool,
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template) and probes how it reads messages.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut template = Self {
            env: env::environment(source)?,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            caps: Caps::default(),
            fallback: false,
        };
        template.caps = caps::probe(&template);
        Ok(template)
    }

    /// The template for models that ship none, e.g. base models like gemma-3-270m. It writes one
    /// line per message, `Role: content` with the role capitalised, tool calls as JSON lines after
    /// their message, a `Tools: [...]` line first when tools are given, and `Assistant:` as the
    /// generation prompt. The special tokens are not used.
    ///
    /// ```text
    /// System: You are terse.
    /// User: Hi
    /// Assistant:
    /// ```
    pub fn fallback(bos_token: &str, eos_token: &str) -> Self {
        let mut template = Self::new(FALLBACK_SOURCE, bos_token, eos_token)
            .expect("the fallback template compiles");
        template.fallback = true;
        template
    }

    /// Whether the template renders the `tools` it is given (probed by rendering a dummy tool).
    pub fn supports_tools(&self) -> bool {
        let probe = serde_json::json!({"type": "function", "function": {
            "name": "ward_probe_tool", "description": "probe", "parameters": {"type": "object", "properties": {}}}});
        self.render(&[ChatMessage::user("hi")], Some(&[probe]), true)
            .is_ok_and(|out| out.contains("ward_probe_tool"))
    }

    /// Whether this is [`ChatTemplate::fallback`] rather than the model's own template.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Renders a conversation; `tools` are OpenAI-style tool definitions.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with(
            messages,
            tools,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }

    /// Like [`ChatTemplate::render`], with extra template variables such as `enable_thinking`.
    /// They may set `documents` but cannot override `messages`, `tools`, `add_generation_prompt`
    /// or the tokens.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let merged;
        let messages = if self.caps.system_role {
            messages
        } else {
            merged = message::merge_leading_system(messages);
            &merged[..]
        };
        self.render_as(messages, &self.caps, tools, add_generation_prompt, extra)
    }

    /// Renders with the given capabilities; the probes call this with candidate ones.
    fn render_as(
        &self,
        messages: &[ChatMessage],
        caps: &Caps,
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let messages = messages.iter().map(|m| m.to_value(caps)).collect();
        self.render_values(messages, tools, add_generation_prompt, extra)
    }

    /// Renders messages already converted to template values.
    fn render_values(
        &self,
        messages: Vec<Value>,
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let ctx = self.context(messages, tools, add_generation_prompt, extra);
        let template = self.env.get_template(NAME).map_err(render_error)?;
        template.render(ctx).map_err(render_error)
    }

    /// The variables a render sees.
    fn context(
        &self,
        messages: Vec<Value>,
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Value {
        let mut ctx = OrderedMap::default();
        ctx.insert("documents", Value::from(()));
        for (key, val) in extra {
            ctx.insert(key.as_str(), value::from_json(val));
        }
        ctx.insert("messages", Value::from(messages));
        let tools = tools.map(|t| Value::from(t.iter().map(value::from_json).collect::<Vec<_>>()));
        ctx.insert("tools", tools.unwrap_or(Value::from(())));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("bos_token", Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token", Value::from(self.eos_token.as_str()));
        ctx.into_value()
    }
}

fn render_error(e: Error) -> EngineError {
    EngineError::Template(describe(&e))
}

/// An error's message, with its template line, followed by its causes.
fn describe(e: &Error) -> String {
    let mut text = match (e.detail(), e.line()) {
        (Some(detail), Some(line)) => format!("{detail} (line {line})"),
        (Some(detail), None) => detail.to_string(),
        _ => e.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}
