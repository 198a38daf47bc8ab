//! Unit tests of the template environment: Python semantics, errors, probes and the fallback.

use serde_json::json;

use super::*;

fn render_src(source: &str, messages: &[ChatMessage]) -> Result<String> {
    ChatTemplate::new(source, "<s>", "</s>")?.render(messages, None, true)
}

fn eval(expr: &str) -> String {
    render_src(&format!("{{{{ {expr} }}}}"), &[]).unwrap()
}

#[test]
fn raise_exception_surfaces_the_template_message() {
    let source = "{% if messages[0].role != 'user' %}\
        {{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}ok";
    let err = render_src(source, &[ChatMessage::assistant("hi")]).unwrap_err();
    let EngineError::Template(message) = err else {
        panic!("expected a template error, got {err:?}");
    };
    assert!(
        message.contains("Conversation roles must alternate user/assistant"),
        "{message}"
    );
    assert_eq!(
        render_src(source, &[ChatMessage::user("hi")]).unwrap(),
        "ok"
    );
}

#[test]
fn compile_errors_are_template_errors() {
    let err = ChatTemplate::new("{% for %}", "", "").unwrap_err();
    assert!(
        matches!(err, EngineError::Template(ref m) if m.contains("cannot compile")),
        "{err:?}"
    );
}

#[test]
fn tojson_matches_python_json_dumps() {
    // Keys in sorted order: serde_json's `json!` sorts them unless built with `preserve_order`.
    let data = json!({"a": [1, 2.5, "x\n\"é"], "b": null, "c": true, "e": {}, "f": [],
        "g": 1e20, "h": 1e-5, "i": 0.0001, "j": 1.0, "z": 1});
    let mut extra = serde_json::Map::new();
    extra.insert("d".into(), data);
    let t = ChatTemplate::new(
        "{{ d | tojson }}\n{{ d | tojson(indent=2) }}\n\
         {{ d | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }}",
        "",
        "",
    )
    .unwrap();
    let out = t.render_with(&[], None, false, &extra).unwrap();
    let expected = concat!(
        r#"{"a": [1, 2.5, "x\n\"é"], "b": null, "c": true, "e": {}, "f": [], "g": 1e+20, "h": 1e-05, "i": 0.0001, "j": 1.0, "z": 1}"#,
        "\n{\n  \"a\": [\n    1,\n    2.5,\n    \"x\\n\\\"é\"\n  ],\n  \"b\": null,\n",
        "  \"c\": true,\n  \"e\": {},\n  \"f\": [],\n  \"g\": 1e+20,\n  \"h\": 1e-05,\n",
        "  \"i\": 0.0001,\n  \"j\": 1.0,\n  \"z\": 1\n}\n",
        r#"{"a":[1,2.5,"x\n\"\u00e9"],"b":null,"c":true,"e":{},"f":[],"g":1e+20,"h":1e-05,"i":0.0001,"j":1.0,"z":1}"#,
    );
    assert_eq!(out, expected);
    assert_eq!(
        eval(r#""😀\x01" | tojson(true)"#),
        r#""\ud83d\ude00\u0001""#
    );
    assert_eq!(
        eval("{'b': 1, 'a': none} | tojson(sort_keys=true)"),
        r#"{"a": null, "b": 1}"#
    );
    assert_eq!(
        eval("'{\"b\": 1, \"a\": 2}' | tojson"),
        r#""{\"b\": 1, \"a\": 2}""#
    );
}

#[test]
fn dict_literals_keep_their_key_order() {
    assert_eq!(
        eval("{'b': 1, 'a': none} | tojson"),
        r#"{"b": 1, "a": null}"#
    );
}

#[test]
fn tools_keep_their_key_order() {
    let tool: serde_json::Value =
        serde_json::from_str(r#"{"type": "function", "function": {}}"#).unwrap();
    let t = ChatTemplate::new("{{ tools | tojson }}", "", "").unwrap();
    assert_eq!(
        t.render(&[], Some(&[tool]), false).unwrap(),
        r#"[{"type": "function", "function": {}}]"#
    );
}

#[test]
fn values_print_like_python() {
    assert_eq!(eval("none"), "None");
    assert_eq!(eval("true"), "True");
    assert_eq!(
        eval(r#"[none, false, "it's", {'k': 1.5}]"#),
        r#"[None, False, "it's", {'k': 1.5}]"#
    );
    assert_eq!(eval("1e20"), "1e+20");
    assert_eq!(eval("false | string"), "False");
    assert_eq!(eval("3"), "3");
}

#[test]
fn python_methods_and_jinja_features_work() {
    assert_eq!(eval("'  a b  '.strip()"), "a b");
    assert_eq!(eval("'a,b'.split(',')[-1]"), "b");
    assert_eq!(eval("'<think>x'.startswith('<think>')"), "True");
    assert_eq!(eval("'abc'[::-1]"), "cba");
    assert_eq!(eval("'{} {}'.format('a', 1)"), "a 1");
    assert_eq!(eval("{'k': 1}.items() | list"), "[['k', 1]]");
    assert_eq!(eval("{'k': 1}.get('x', 2)"), "2");
    let source = "{%- set ns = namespace(n=0) -%}\
        {%- for m in messages -%}{%- if loop.index > 2 %}{% break %}{% endif -%}\
        {%- if m.role == 'skip' %}{% continue %}{% endif -%}\
        {%- set ns.n = ns.n + 1 -%}{{ m.content }}|{%- endfor -%}\
        {{ ns.n }}{{ m is defined }}{{ messages[0].tool_calls is defined }}";
    let messages = [
        ChatMessage::new("skip", "s"),
        ChatMessage::user("u"),
        ChatMessage::user("x"),
    ];
    assert_eq!(render_src(source, &messages).unwrap(), "u|1FalseFalse");
}

#[test]
fn blocks_trim_like_transformers() {
    let source = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
    let out = render_src(source, &[ChatMessage::user("a"), ChatMessage::user("b")]).unwrap();
    assert_eq!(out, "[a]\n[b]\n");
}

#[test]
fn strftime_now_formats_local_time() {
    let year = chrono::Local::now().format("%Y").to_string();
    assert_eq!(eval("strftime_now('%Y')"), year);
}

#[test]
fn generation_tags_render_their_body() {
    let source =
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}";
    assert_eq!(
        render_src(source, &[ChatMessage::user("hi")]).unwrap(),
        "hi"
    );
}

#[test]
fn fallback_template_is_plain_text() {
    let t = ChatTemplate::fallback("<bos>", "<eos>");
    assert!(t.is_fallback());
    let messages = [ChatMessage::system("Be terse."), ChatMessage::user("Hi")];
    assert_eq!(
        t.render(&messages, None, true).unwrap(),
        "System: Be terse.\nUser: Hi\nAssistant:"
    );
    assert_eq!(
        t.render(&messages, None, false).unwrap(),
        "System: Be terse.\nUser: Hi\n"
    );
    assert!(!ChatTemplate::new("x", "", "").unwrap().is_fallback());
}

fn tool_call_message(arguments: &str) -> ChatMessage {
    serde_json::from_value(json!({
        "role": "assistant", "content": null,
        "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": arguments}}],
    }))
    .unwrap()
}

#[test]
fn arguments_are_parsed_for_templates_that_need_a_mapping() {
    let qwen_like = "{% for m in messages %}{% for c in m.tool_calls or [] %}\
        {{ c.function.arguments | tojson }}{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(qwen_like, "", "").unwrap();
    assert!(t.caps.object_arguments);
    let out = t
        .render(&[tool_call_message(r#"{"b":1,"a":"x"}"#)], None, false)
        .unwrap();
    assert_eq!(out, r#"{"b": 1, "a": "x"}"#);

    let raw = "{% for m in messages %}{% for c in m.tool_calls or [] %}\
        {{ c.function.arguments }}{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(raw, "", "").unwrap();
    assert!(!t.caps.object_arguments);
    let out = t
        .render(&[tool_call_message(r#"{"b":1}"#)], None, false)
        .unwrap();
    assert_eq!(out, r#"{"b":1}"#);
}

#[test]
fn system_is_merged_for_templates_without_a_system_role() {
    let source = "{% for m in messages %}{% if m.role == 'system' %}\
        {{ raise_exception('System role not supported') }}{% endif %}\
        [{{ m.role }}:{{ m.content }}]{% endfor %}";
    let t = ChatTemplate::new(source, "", "").unwrap();
    assert!(!t.caps.system_role);
    let out = t
        .render(
            &[ChatMessage::system("S"), ChatMessage::user("U")],
            None,
            false,
        )
        .unwrap();
    assert_eq!(out, "[user:S\nU]");
}

#[test]
fn typed_content_reaches_templates_that_iterate_parts() {
    let source = "{% for m in messages %}{% for p in m.content %}\
        {% if p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(source, "", "").unwrap();
    assert!(t.caps.typed_content);
    assert_eq!(
        t.render(&[ChatMessage::user("hello")], None, false)
            .unwrap(),
        "hello"
    );
}

#[test]
fn messages_deserialize_from_openai_json() {
    let m: ChatMessage = serde_json::from_value(json!({
        "role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }))
    .unwrap();
    assert_eq!(m.content.as_ref().unwrap().text(), "a\nb");
    let m: ChatMessage = serde_json::from_value(json!({"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": {"x": 1}}}]}))
    .unwrap();
    let call = &m.tool_calls.as_ref().unwrap()[0];
    assert_eq!(
        (call.r#type.as_str(), call.function.arguments.as_str()),
        ("function", r#"{"x":1}"#)
    );
    assert!(
        serde_json::from_value::<ChatMessage>(json!({"role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "x"}}]}))
        .is_err()
    );
}

#[test]
fn content_is_an_empty_string_when_absent_and_tools_none_when_not_given() {
    let source =
        "{{ messages[0].content is string }}|{{ messages[0].content }}|{{ tools is none }}";
    assert_eq!(
        render_src(source, &[tool_call_message("{}")]).unwrap(),
        "True||True"
    );
}

#[test]
fn llama_cpp_extensions_work() {
    let source = "{%- set ns = namespace(ids=[]) -%}{%- set _ = ns.ids.append('a') -%}\
        {%- set _ = ns.ids.append('b') -%}{{ ns.ids.pop(0) }}{{ ns.ids | length }}\
        {{ ('{\"k\": [1]}' | from_json).k[0] }}";
    assert_eq!(render_src(source, &[]).unwrap(), "a11");
}

#[test]
fn tests_and_filters_follow_jinja2() {
    assert_eq!(eval("none is iterable"), "False");
    assert_eq!(eval("'ab' is iterable"), "True");
    assert_eq!(eval("'ab' is sequence"), "True");
    assert_eq!(eval("'{\\n' | indent(4, first=true)"), "    {\n");
    assert_eq!(eval("'a\\n\\nb' | indent(2)"), "a\n\n  b");
    assert_eq!(eval("'a\\nb' | indent('> ', blank=true)"), "a\n> b");
}

#[test]
fn templates_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}
