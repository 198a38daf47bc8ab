//! Chat messages in OpenAI's shape, and how they are handed to a template.

use minijinja::Value;
use serde::{Deserialize, Deserializer, Serialize};

use super::caps::Caps;
use super::value::{self, OrderedMap};

/// One message of a conversation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool` (templates may accept others).
    pub role: String,
    /// The text; absent on assistant messages that only call tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// On a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The speaker's or tool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant's reasoning, for templates that replay it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// Message content: a string, or a list of parts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts; only text parts exist for a text-only model.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// `{"type": "text", "text": ...}`.
    Text {
        /// The text.
        text: String,
    },
}

/// A tool call made by the assistant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    /// The call's id, echoed by the tool message that answers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Always `"function"`.
    #[serde(rename = "type", default = "function_type")]
    pub r#type: String,
    /// The function called.
    pub function: FunctionCall,
}

/// The function a [`ToolCall`] invokes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as JSON text (an object sent instead is accepted and kept as its JSON text).
    #[serde(deserialize_with = "json_text")]
    pub arguments: String,
}

fn function_type() -> String {
    "function".to_string()
}

fn json_text<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(de)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

impl MessageContent {
    /// The text, with text parts joined by `"\n"` as llama.cpp joins them.
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Parts(parts) => parts
                .iter()
                .map(|ContentPart::Text { text }| text.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl ChatMessage {
    /// A message with text content and nothing else.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: Some(MessageContent::Text(content.to_string())),
            tool_calls: None,
            tool_call_id: None,
            name: None,
            reasoning_content: None,
        }
    }

    /// A `system` message.
    pub fn system(content: &str) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: &str) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: &str) -> Self {
        Self::new("assistant", content)
    }

    /// The message as the template sees it, shaped by the template's capabilities.
    pub(super) fn to_value(&self, caps: &Caps) -> Value {
        self.to_value_with(caps, &|call| arguments_value(call, caps.object_arguments))
    }

    /// [`ChatMessage::to_value`] with the tool-call arguments given by `arguments`.
    pub(super) fn to_value_with(
        &self,
        caps: &Caps,
        arguments: &dyn Fn(&FunctionCall) -> Value,
    ) -> Value {
        let text = self
            .content
            .as_ref()
            .map(MessageContent::text)
            .unwrap_or_default();
        let content = if caps.typed_content {
            let parts: Vec<ContentPart> = match &self.content {
                Some(MessageContent::Parts(parts)) => parts.clone(),
                _ => vec![ContentPart::Text { text }],
            };
            Value::from(parts.iter().map(part_value).collect::<Vec<_>>())
        } else {
            Value::from(text)
        };
        let mut map = OrderedMap::default();
        map.insert("role", Value::from(self.role.as_str()));
        map.insert("content", content);
        if let Some(calls) = self.tool_calls.as_ref().filter(|c| !c.is_empty()) {
            let calls = calls.iter().map(|c| call_value(c, arguments(&c.function)));
            map.insert("tool_calls", Value::from(calls.collect::<Vec<_>>()));
        }
        let optional = [
            ("tool_call_id", &self.tool_call_id),
            ("name", &self.name),
            ("reasoning_content", &self.reasoning_content),
        ];
        for (key, field) in optional {
            if let Some(text) = field {
                map.insert(key, Value::from(text.as_str()));
            }
        }
        map.into_value()
    }
}

fn part_value(part: &ContentPart) -> Value {
    let ContentPart::Text { text } = part;
    let mut map = OrderedMap::default();
    map.insert("type", Value::from("text"));
    map.insert("text", Value::from(text.as_str()));
    map.into_value()
}

/// A call's arguments: parsed into a mapping with `object_arguments` when they are JSON, else
/// the text as sent.
fn arguments_value(function: &FunctionCall, object_arguments: bool) -> Value {
    let raw = function.arguments.as_str();
    object_arguments
        .then(|| value::parse_json(raw).ok())
        .flatten()
        .unwrap_or_else(|| Value::from(raw))
}

/// A tool call as templates expect it.
fn call_value(call: &ToolCall, arguments: Value) -> Value {
    let mut function = OrderedMap::default();
    function.insert("name", Value::from(call.function.name.as_str()));
    function.insert("arguments", arguments);
    let mut map = OrderedMap::default();
    if let Some(id) = &call.id {
        map.insert("id", Value::from(id.as_str()));
    }
    map.insert("type", Value::from(call.r#type.as_str()));
    map.insert("function", function.into_value());
    map.into_value()
}

/// For templates without a system role: the leading system message's text is prepended to the
/// next message, separated by `"\n"`, or dropped when it is alone (llama.cpp's workaround).
pub(super) fn merge_leading_system(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    match messages {
        [system, next, rest @ ..] if system.role == "system" => {
            let sys = system
                .content
                .as_ref()
                .map(MessageContent::text)
                .unwrap_or_default();
            let body = next
                .content
                .as_ref()
                .map(MessageContent::text)
                .unwrap_or_default();
            let mut merged = next.clone();
            merged.content = Some(MessageContent::Text(format!("{sys}\n{body}")));
            std::iter::once(merged)
                .chain(rest.iter().cloned())
                .collect()
        }
        [system] if system.role == "system" => Vec::new(),
        _ => messages.to_vec(),
    }
}
