//! OpenAI wire types: the request bodies ward accepts, as the openai SDKs and Wazuh send them.
//! Unknown fields are ignored, as OpenAI does. Responses are built in the handlers.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `stop`: a string or a list of strings.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl StopSpec {
    /// As a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a final chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema and its options.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    /// Schema name.
    #[serde(default)]
    pub name: Option<String>,
    /// The JSON schema.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Strict adherence (always enforced by ward).
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A tool the model may call.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

fn function_type() -> String {
    "function".into()
}

/// A function definition.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FunctionDef {
    /// Name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub parameters: Option<Value>,
    /// Strict schema adherence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// Sampling and length parameters shared by chat and text completions.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopSpec>,
    /// RNG seed.
    pub seed: Option<i64>,
    /// Number of choices.
    pub n: Option<i64>,
    /// Temperature (0-2).
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Presence penalty (-2..2).
    pub presence_penalty: Option<f32>,
    /// Frequency penalty (-2..2).
    pub frequency_penalty: Option<f32>,
    /// Extension: top-k.
    pub top_k: Option<i64>,
    /// Extension: min-p.
    pub min_p: Option<f32>,
    /// Extension: repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Extension (llama.cpp, vLLM): keep generating past end-of-generation tokens, to
    /// `max_tokens` or a stop string, as load tests need.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Stream with server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// Model name.
    pub model: Option<String>,
    /// The conversation.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// Sampling parameters.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Return log-probabilities.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per position (0-20).
    pub top_logprobs: Option<i64>,
    /// Output format.
    pub response_format: Option<ResponseFormat>,
    /// Tools.
    pub tools: Option<Vec<Tool>>,
    /// `auto`, `none`, `required`, or `{"type":"function","function":{"name":...}}`.
    #[schema(value_type = Object)]
    pub tool_choice: Option<Value>,
    /// Allow several tool calls in one answer.
    pub parallel_tool_calls: Option<bool>,
}

/// A completion prompt: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptSpec {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One token-id prompt.
    Tokens(Vec<u32>),
    /// Several token-id prompts.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// Model name.
    pub model: Option<String>,
    /// The prompt(s).
    pub prompt: PromptSpec,
    /// Sampling parameters.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Echo the prompt before the completion.
    #[serde(default)]
    pub echo: bool,
    /// Alternatives per position (0-5), with log-probabilities.
    pub logprobs: Option<i64>,
    /// Text appended after the completion.
    pub suffix: Option<String>,
}

/// `POST /v1/embeddings` input.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One token-id input.
    Tokens(Vec<u32>),
    /// Several token-id inputs.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// Model name.
    pub model: Option<String>,
    /// Input(s).
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    pub encoding_format: Option<String>,
}

/// `POST /tokenize` (llama.cpp's shape).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    /// Text.
    pub content: String,
    /// Add BOS/EOS.
    #[serde(default)]
    pub add_special: bool,
    /// Also return each token's text.
    #[serde(default)]
    pub with_pieces: bool,
    /// Model name.
    pub model: Option<String>,
}

/// `POST /detokenize` (llama.cpp's shape).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Model name.
    pub model: Option<String>,
}
