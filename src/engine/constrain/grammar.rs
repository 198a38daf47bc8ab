//! Turning a [`ConstraintSpec`] into an llguidance grammar. JSON gets llama.cpp's whitespace
//! rule: between two tokens at most 20 spaces or tabs, or one or two line breaks and an indent of
//! up to 20, so that a small model cannot fill its budget with blank space.

use llguidance::JsonCompileOptions;
use llguidance::api::TopLevelGrammar;
use serde_json::{Value, json};

use super::ConstraintSpec;

/// Whitespace allowed between two JSON tokens.
const JSON_WHITESPACE: &str = r"[\x20\x09]{1,20}|(?:\x0D?\x0A){1,2}[\x20\x09]{0,20}";

/// The llguidance grammar of a spec, or why there is none.
pub(super) fn top_level(spec: &ConstraintSpec) -> Result<TopLevelGrammar, String> {
    match spec {
        ConstraintSpec::JsonObject => Ok(json_schema(json!({ "type": "object" }), false)),
        ConstraintSpec::JsonSchema { schema, strict } => match schema {
            Value::Object(_) => Ok(json_schema(schema.clone(), !strict)),
            Value::Bool(true) => Ok(json_schema(json!({}), !strict)),
            _ => Err("the JSON schema must be an object".into()),
        },
        ConstraintSpec::Lark(grammar) if grammar.trim().is_empty() => {
            Err("the grammar is empty".into())
        }
        ConstraintSpec::Lark(grammar) => Ok(TopLevelGrammar::from_lark(grammar.clone())),
        ConstraintSpec::Regex(rx) => Ok(TopLevelGrammar::from_regex(rx)),
    }
}

/// A JSON-schema grammar with ward's compile options; `lenient` ignores keywords that cannot be
/// enforced instead of refusing the schema. Options a client put in `x-guidance` are replaced.
fn json_schema(mut schema: Value, lenient: bool) -> TopLevelGrammar {
    let options = JsonCompileOptions {
        whitespace_pattern: Some(JSON_WHITESPACE.to_string()),
        lenient,
        ..JsonCompileOptions::default()
    };
    options.apply_to(&mut schema);
    TopLevelGrammar::from_json_schema(schema)
}
