//! The minijinja environment set up like transformers' Jinja2 sandbox, plus the few extensions
//! that llama.cpp's own Jinja engine offers and real templates use.

use std::fmt::Write as _;

use minijinja::value::{Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};

use super::value::{self, MutableList, OrderedMap};
use super::{NAME, python};
use crate::engine::error::{EngineError, Result};

/// Builds the environment holding `source` under [`NAME`].
pub(super) fn environment(source: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_formatter(format_value);
    // transformers' globals and filter.
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", python::tojson);
    // Python semantics where minijinja's builtins differ from Jinja2's.
    env.add_filter("string", |v: &Value| python::py_str(v));
    env.add_filter("indent", python::indent);
    env.add_test("iterable", is_iterable);
    env.add_test("sequence", is_sequence);
    // llama.cpp extensions: `from_json`, and lists in a namespace that `.append()` / `.pop()`.
    env.add_filter("from_json", from_json);
    env.add_function("namespace", namespace);
    env.add_template_owned(NAME, strip_generation_tags(source))
        .map_err(|e| EngineError::Template(format!("cannot compile: {}", super::describe(&e))))?;
    Ok(env)
}

/// transformers' `{% generation %}...{% endgeneration %}` marks assistant spans for training
/// masks and renders its body unchanged; it becomes `{% if true %}...{% endif %}`, keeping the
/// tags' whitespace control.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let word =
            tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        match word {
            "generation" => out.push_str(&tag.replacen("generation", "if true", 1)),
            "endgeneration" => out.push_str(&tag.replacen("endgeneration", "endif", 1)),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// `raise_exception(message)`: fails the render with the template's own message.
fn raise_exception(message: Rest<Value>) -> std::result::Result<Value, Error> {
    let text: Vec<String> = message.iter().map(python::py_str).collect();
    Err(Error::new(ErrorKind::InvalidOperation, text.join(" ")))
}

/// `strftime_now(format)`: the local time, formatted like Python's `strftime`.
fn strftime_now(format: &str) -> std::result::Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

/// Prints values as Jinja2 (Python's `str`) does: `None`, `True`, `['a']`, `{'k': 1}`, `1e+20`.
fn format_value(
    out: &mut minijinja::Output<'_>,
    state: &State<'_, '_>,
    value: &Value,
) -> std::result::Result<(), Error> {
    let python = match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => true,
        ValueKind::Number => !value.is_integer(),
        _ => false,
    };
    if python {
        out.write_str(&python::py_str(value))
            .map_err(|_| Error::from(ErrorKind::WriteFailure))
    } else {
        minijinja::escape_formatter(out, state, value)
    }
}

/// Jinja2's `iterable`: whatever Python can iterate, which excludes `None`, numbers and booleans.
fn is_iterable(value: &Value) -> bool {
    !matches!(
        value.kind(),
        ValueKind::None | ValueKind::Bool | ValueKind::Number
    ) && value.try_iter().is_ok()
}

/// Jinja2's `sequence`: anything with a length and indexing, strings and dicts included.
fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::String | ValueKind::Seq | ValueKind::Map | ValueKind::Undefined
    )
}

/// `from_json`: parses JSON text, as llama.cpp's and vLLM's environments offer.
fn from_json(text: &str) -> std::result::Result<Value, Error> {
    value::parse_json(text)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("from_json: {e}")))
}

/// `namespace(...)` whose list attributes support `.append()`, `.pop()` and friends, which
/// some templates (Kimi K2) use to queue tool-call ids.
fn namespace(defaults: Option<Value>) -> std::result::Result<Value, Error> {
    let Some(defaults) = defaults else {
        return minijinja::functions::namespace(None);
    };
    let mut map = OrderedMap::default();
    for key in defaults.try_iter()? {
        let item = defaults.get_item(&key)?;
        let item = match item.kind() {
            ValueKind::Seq => MutableList::from_value(&item)?,
            _ => item,
        };
        map.insert(key, item);
    }
    minijinja::functions::namespace(Some(map.into_value()))
}
