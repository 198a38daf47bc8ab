//! What a template expects of its messages, found by rendering small conversations once at
//! compile time, the way llama.cpp's minja probed template capabilities: does it print string
//! content, does it keep a system message, and does it read tool-call arguments as a mapping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use minijinja::Value;
use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde_json::json;

use super::value::OrderedMap;
use super::{ChatMessage, ChatTemplate, FunctionCall, ToolCall};
use crate::engine::error::Result;

/// How messages are shaped for one template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Content goes in as `[{type: "text", text}]` instead of a string.
    pub(crate) typed_content: bool,
    /// The template prints a leading system message (else it is merged into the next one).
    pub(crate) system_role: bool,
    /// Tool-call arguments go in as a parsed mapping instead of JSON text.
    pub(crate) object_arguments: bool,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            typed_content: false,
            system_role: true,
            object_arguments: false,
        }
    }
}

const CONTENT_NEEDLE: &str = "<content needle 7f3a>";
const SYSTEM_NEEDLE: &str = "<system needle 7f3a>";
const ARGUMENT_KEY: &str = "argument_needle";
const ARGUMENT_VALUE: &str = "print('Hello, World!')";

/// Probes `template`; rendering failures count as "not supported".
pub(crate) fn probe(template: &ChatTemplate) -> Caps {
    let extra = serde_json::Map::new();
    let render = |messages: &[ChatMessage], caps: &Caps, tools: Option<&[serde_json::Value]>| {
        template.render_as(messages, caps, tools, true, &extra)
    };
    let shows = |rendered: &Result<String>, needle: &str| {
        rendered.as_ref().is_ok_and(|text| text.contains(needle))
    };
    let mut caps = Caps::default();

    let user = [ChatMessage::user(CONTENT_NEEDLE)];
    if !shows(&render(&user, &caps, None), CONTENT_NEEDLE) {
        let typed = Caps {
            typed_content: true,
            ..caps
        };
        caps.typed_content = shows(&render(&user, &typed, None), CONTENT_NEEDLE);
    }

    // A template that fails with and without a system message tells nothing: keep the default.
    let with_system = [ChatMessage::system(SYSTEM_NEEDLE), ChatMessage::user("Hey")];
    caps.system_role = match render(&with_system, &caps, None) {
        Ok(text) => text.contains(SYSTEM_NEEDLE),
        Err(_) => render(&with_system[1..], &caps, None).is_err(),
    };

    let tools = [json!({
        "type": "function",
        "function": {
            "name": "ipython",
            "description": "Runs Python code.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "The code."}},
                "required": ["code"],
            },
        },
    })];
    // Like llama.cpp: a mapping whenever the template reads into one (`tojson`, `.items()`,
    // `dictsort`), unless it only prints it, which gives Python's repr; also whenever the
    // template fails on text but not on a mapping.
    let conversation = tool_conversation();
    let used = Arc::new(AtomicBool::new(false));
    let tracked = |_: &FunctionCall| {
        let mut map = OrderedMap::default();
        map.insert(ARGUMENT_KEY, Value::from(ARGUMENT_VALUE));
        Value::from_object(Tracked {
            inner: map.into_value(),
            used: used.clone(),
        })
    };
    let messages = conversation
        .iter()
        .map(|m| m.to_value_with(&caps, &tracked))
        .collect();
    let as_object = template.render_values(messages, Some(&tools), true, &extra);
    caps.object_arguments = match as_object {
        Ok(text) if used.load(Ordering::Relaxed) => !text.contains(&format!("'{ARGUMENT_KEY}'")),
        Ok(_) => render(&conversation, &caps, Some(&tools)).is_err(),
        Err(_) => false,
    };
    caps
}

/// A mapping that records whether the template looked inside it.
#[derive(Debug)]
struct Tracked {
    inner: Value,
    used: Arc<AtomicBool>,
}

impl Object for Tracked {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.used.store(true, Ordering::Relaxed);
        self.inner.get_item(key).ok().filter(|v| !v.is_undefined())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.used.store(true, Ordering::Relaxed);
        Enumerator::Values(
            self.inner
                .try_iter()
                .map(Iterator::collect)
                .unwrap_or_default(),
        )
    }
}

/// A user turn, an assistant tool call, its result, the assistant's answer and a closing user
/// turn, which keeps user / assistant alternation; the call id has the nine alphanumerics that
/// Mistral's templates insist on.
fn tool_conversation() -> Vec<ChatMessage> {
    let mut call = ChatMessage::assistant("");
    call.content = None;
    call.tool_calls = Some(vec![ToolCall {
        id: Some("call00001".to_string()),
        r#type: "function".to_string(),
        function: FunctionCall {
            name: "ipython".to_string(),
            arguments: format!("{{\"{ARGUMENT_KEY}\": \"{ARGUMENT_VALUE}\"}}"),
        },
    }]);
    let mut result = ChatMessage::new("tool", "Hello, World!");
    result.tool_call_id = Some("call00001".to_string());
    vec![
        ChatMessage::user("Say hello"),
        call,
        result,
        ChatMessage::assistant("It said hello."),
        ChatMessage::user("Thanks"),
    ]
}
