//! Turning a conversation into prompt tokens: the model's chat template, tools rendered by the
//! template or described in a system message when the template has no place for them, and
//! tokenization that does not double the BOS token.

use serde_json::Value;

use crate::engine::error::Result;
use crate::engine::loaded::LoadedModel;
use crate::engine::template::{ChatMessage, MessageContent};

use super::tools;

/// Renders and tokenizes a chat prompt.
pub fn chat_prompt(
    model: &LoadedModel,
    messages: &[ChatMessage],
    tools: Option<&[Value]>,
) -> Result<Vec<u32>> {
    let mut msgs = messages.to_vec();
    let mut tools = tools.filter(|t| !t.is_empty());
    if let Some(t) = tools
        && !model.template.supports_tools()
    {
        let text = tools::tools_system_prompt(t);
        match msgs.first_mut() {
            Some(m) if m.role == "system" => {
                let old = m
                    .content
                    .as_ref()
                    .map(MessageContent::text)
                    .unwrap_or_default();
                m.content = Some(MessageContent::Text(format!("{old}\n\n{text}")));
            }
            _ => msgs.insert(0, ChatMessage::system(&text)),
        }
        tools = None;
    }
    let rendered = model.template.render(&msgs, tools, true)?;
    Ok(tokenize_rendered(model, &rendered))
}

/// Tokenizes rendered template text: special tokens are parsed, and BOS is added only when the
/// model wants one and the template did not already write it.
pub fn tokenize_rendered(model: &LoadedModel, text: &str) -> Vec<u32> {
    let tok = &model.tokenizer;
    let bos_text = tok
        .bos()
        .map(|b| tok.piece(b).to_string())
        .unwrap_or_default();
    let add = tok.adds_bos() && !(bos_text.is_empty() || text.starts_with(&bos_text));
    let mut ids = tok.encode(text, false, true);
    if add && let Some(b) = tok.bos() {
        ids.insert(0, b);
    }
    ids
}
