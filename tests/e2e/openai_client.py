"""End-to-end checks of ward's OpenAI-compatible API with the official `openai` Python SDK.

Run by tests/e2e_openai.rs against the real binary:

    python openai_client.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY \
        --busy-url http://127.0.0.1:PORT2/v1 --busy-embedder NAME

`--base-url` is a server with `--api-key KEY`; `--busy-url` is a server with a queue of one
request and an embedding model that never finishes loading (for 429 and 503). Every check
prints its name and, when it fails, why; the script exits 1 when any check failed.
"""

import argparse
import json
import math
import re
import sys
import threading
import traceback
import urllib.error
import urllib.request

import openai
from openai import OpenAI

MODEL = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(exc_class, status, fn, code=None):
    """Runs fn, which must raise exc_class with the given status (and error code)."""
    try:
        fn()
    except exc_class as e:
        expect(e.status_code == status, f"status {e.status_code}, expected {status}: {e}")
        body = e.body
        expect(isinstance(body, dict), f"error body is not OpenAI's error object: {body!r}")
        for key in ("message", "type", "param", "code"):
            expect(key in body, f"error.{key} missing: {body!r}")
        expect(isinstance(body["message"], str) and body["message"], f"empty message: {body!r}")
        if code is not None:
            expect(e.code == code, f"code {e.code!r}, expected {code!r}")
        return e
    except openai.APIStatusError as e:
        raise AssertionError(f"expected {exc_class.__name__} ({status}), got {type(e).__name__} {e.status_code}: {e}")
    raise AssertionError(f"expected {exc_class.__name__} ({status}), but the call succeeded")


# Arguments are bounded (length, pattern, range) so that a forced call by a 135M model always
# completes within max_tokens; the checks below hold the server to those bounds.
IP = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
BLOCK = {
    "type": "function",
    "function": {
        "name": "block_ip",
        "description": "Block an IP address at the firewall.",
        "parameters": {
            "type": "object",
            "properties": {
                "ip": {"type": "string", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$"},
                "minutes": {"type": "integer", "minimum": 1, "maximum": 10080},
            },
            "required": ["ip", "minutes"],
        },
    },
}


def user(text):
    return [{"role": "user", "content": text}]


@check
def models(c, a):
    ids = [m.id for m in c.models.list().data]
    expect(MODEL in ids and EMBEDDER in ids, f"models: {ids}")


@check
def chat(c, a):
    r = c.chat.completions.create(model=MODEL, messages=user("Say hello to the SOC team."), max_tokens=10)
    expect(r.object == "chat.completion", r.object)
    msg = r.choices[0].message
    expect(msg.role == "assistant" and isinstance(msg.content, str) and msg.content, f"message: {msg}")
    expect(r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason)
    u = r.usage
    expect(u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 10, f"usage: {u}")
    expect(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage: {u}")
    r = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        max_completion_tokens=3,
    )
    expect(r.usage.completion_tokens <= 3, f"max_completion_tokens: {r.usage}")


@check
def streaming_with_usage(c, a):
    stream = c.chat.completions.create(
        model=MODEL, messages=user("Name three colours."), max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    expect(len(chunks) >= 3, f"{len(chunks)} chunks")
    expect(chunks[0].choices[0].delta.role == "assistant", f"first chunk: {chunks[0]}")
    last = chunks[-1]
    expect(last.choices == [] and last.usage is not None, f"last chunk: {last}")
    expect(all(ch.usage is None for ch in chunks[:-1]), "usage only in the last chunk")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1])
    finishes = [ch.choices[0].finish_reason for ch in chunks[:-1] if ch.choices[0].finish_reason]
    expect(len(finishes) == 1 and finishes[0] in ("stop", "length"), f"finish reasons: {finishes}")
    expect(len({ch.id for ch in chunks}) == 1, "one id per stream")
    plain = c.chat.completions.create(model=MODEL, messages=user("Name three colours."), max_tokens=12, temperature=0)
    expect(plain.choices[0].message.content == text, f"stream {text!r} vs plain {plain.choices[0].message.content!r}")
    expect(last.usage.completion_tokens == plain.usage.completion_tokens, f"{last.usage} vs {plain.usage}")


@check
def n_two(c, a):
    r = c.chat.completions.create(model=MODEL, messages=user("A fact about DNS."), max_tokens=6, n=2, seed=5)
    expect([ch.index for ch in r.choices] == [0, 1], f"choices: {r.choices}")
    expect(2 <= r.usage.completion_tokens <= 12, f"usage: {r.usage}")
    stream = c.chat.completions.create(model=MODEL, messages=user("A fact about DNS."), max_tokens=6, n=2, stream=True)
    finished = {ch.choices[0].index for ch in stream if ch.choices and ch.choices[0].finish_reason}
    expect(finished == {0, 1}, f"streamed n=2 finished {finished}")


@check
def seed_reproducibility(c, a):
    def ask(seed):
        r = c.chat.completions.create(model=MODEL, messages=user("Invent a name for a firewall."), max_tokens=16, temperature=1.0, seed=seed)
        return r.choices[0].message.content
    first, second = ask(42), ask(42)
    expect(first == second, f"same seed, different text: {first!r} vs {second!r}")
    others = [ask(s) for s in (1, 2, 3)]
    expect(any(o != first for o in others), f"seeds have no effect: {first!r} {others!r}")


@check
def json_schema(c, a):
    schema = {
        "type": "object",
        "properties": {
            "host": {"type": "string", "maxLength": 30},
            "severity": {"type": "integer", "minimum": 1, "maximum": 15},
            "action": {"type": "string", "enum": ["block", "monitor", "ignore"]},
        },
        "required": ["host", "severity", "action"],
        "additionalProperties": False,
    }
    r = c.chat.completions.create(
        model=MODEL, messages=user("Triage an alert about a port scan from host web01."), max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "triage", "strict": True, "schema": schema}},
    )
    expect(r.choices[0].finish_reason == "stop", f"finish: {r.choices[0].finish_reason}")
    v = json.loads(r.choices[0].message.content)
    expect(set(v) == {"host", "severity", "action"}, f"keys: {v}")
    expect(isinstance(v["host"], str) and len(v["host"]) <= 30, f"host: {v}")
    expect(isinstance(v["severity"], int) and 1 <= v["severity"] <= 15, f"severity: {v}")
    expect(v["action"] in ("block", "monitor", "ignore"), f"action: {v}")
    r = c.chat.completions.create(model=MODEL, messages=user("Reply with a short JSON object with the keys name and color for a cat."),
                                  max_tokens=200, temperature=0, response_format={"type": "json_object"})
    expect(isinstance(json.loads(r.choices[0].message.content), dict), "json_object")


def check_call(call, names):
    expect(call.type == "function" and call.id, f"call: {call}")
    expect(call.function.name in names, f"name: {call.function.name}")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        expect(set(args) == {"city", "unit"}, f"args: {args}")
        expect(isinstance(args["city"], str) and len(args["city"]) <= 24 and args["unit"] in ("c", "f"), f"args: {args}")
    else:
        expect(set(args) == {"ip", "minutes"}, f"args: {args}")
        expect(IP.match(args["ip"]) and 1 <= args["minutes"] <= 10080, f"args: {args}")


@check
def tools_not_streamed(c, a):
    for choice, names in (("required", {"get_weather", "block_ip"}), ({"type": "function", "function": {"name": "block_ip"}}, {"block_ip"})):
        r = c.chat.completions.create(
            model=MODEL, messages=user("Block 10.0.0.5 for an hour, and what's the weather in Paris?"),
            tools=[WEATHER, BLOCK], tool_choice=choice, max_tokens=150, temperature=0,
        )
        ch = r.choices[0]
        expect(ch.finish_reason == "tool_calls", f"finish: {ch.finish_reason} {ch.message}")
        expect(ch.message.tool_calls, f"no tool_calls: {ch.message}")
        for call in ch.message.tool_calls:
            check_call(call, names)
    r = c.chat.completions.create(model=MODEL, messages=user("Hi"), tools=[WEATHER], tool_choice="none", max_tokens=8)
    expect(not r.choices[0].message.tool_calls, "tool_choice none")
    # A tool result goes back through the template.
    r = c.chat.completions.create(model=MODEL, tools=[WEATHER], max_tokens=12, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"c\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    ])
    expect(r.choices[0].message.role == "assistant", "tool round trip")


@check
def tools_streamed(c, a):
    # Raw chunks: index-keyed deltas, the first with id, type and name.
    stream = c.chat.completions.create(
        model=MODEL, messages=user("Block 10.0.0.5 for an hour."), tools=[WEATHER, BLOCK],
        tool_choice={"type": "function", "function": {"name": "block_ip"}}, max_tokens=150, stream=True, temperature=0,
    )
    calls, finish = {}, None
    for ch in stream:
        for d in ch.choices[0].delta.tool_calls or []:
            if d.index not in calls:
                expect(d.id and d.type == "function" and d.function.name == "block_ip", f"first delta: {d}")
                calls[d.index] = d.function.arguments or ""
            else:
                expect(d.id is None and (d.function.name is None), f"later delta: {d}")
                calls[d.index] += d.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    expect(finish == "tool_calls" and calls, f"finish {finish}, calls {calls}")
    for args in calls.values():
        v = json.loads(args)
        expect(IP.match(v.get("ip", "")) and isinstance(v.get("minutes"), int), f"args: {v}")
    # The SDK's own stream helper accumulates the same deltas.
    with c.chat.completions.stream(
        model=MODEL, messages=user("Weather in Paris, in celsius?"), tools=[WEATHER, BLOCK], tool_choice="required", max_tokens=150, temperature=0,
    ) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    ch = final.choices[0]
    expect(ch.finish_reason == "tool_calls" and ch.message.tool_calls, f"stream helper: {ch}")
    for call in ch.message.tool_calls:
        check_call(call, {"get_weather", "block_ip"})


@check
def logprobs(c, a):
    r = c.chat.completions.create(model=MODEL, messages=user("What is a CVE?"), max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    expect(len(content) == r.usage.completion_tokens, f"{len(content)} entries for {r.usage.completion_tokens} tokens")
    for e in content:
        expect(e.logprob <= 0 and len(e.top_logprobs) == 3, f"entry: {e}")
        expect(e.top_logprobs[0].token == e.token, f"greedy picks the top token: {e}")
        expect(all(x.logprob >= y.logprob for x, y in zip(e.top_logprobs, e.top_logprobs[1:])), "sorted")


def tokenize(a, text):
    req = urllib.request.Request(a.base_url.removesuffix("/v1") + "/tokenize", data=json.dumps({"content": text}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {a.api_key}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp)["tokens"]


@check
def completions_token_ids(c, a):
    text = "The capital of France is"
    ids = tokenize(a, text)
    r1 = c.completions.create(model=MODEL, prompt=text, max_tokens=4, temperature=0)
    r2 = c.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    expect(r1.choices[0].text == r2.choices[0].text, f"text vs ids: {r1.choices[0].text!r} {r2.choices[0].text!r}")
    r = c.completions.create(model=MODEL, prompt=[ids, tokenize(a, "Firewalls filter")], max_tokens=3, temperature=0)
    expect([ch.index for ch in r.choices] == [0, 1], f"choices: {r.choices}")
    expect(r.choices[0].text == r1.choices[0].text[: len(r.choices[0].text)], "same greedy start")
    # Scoring a given text: echo + logprobs + max_tokens 0.
    s = c.completions.create(model=MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=2)
    lp = s.choices[0].logprobs
    expect(s.choices[0].text == text, f"echo: {s.choices[0].text!r}")
    expect(len(lp.tokens) == len(ids) and "".join(lp.tokens) == text, f"tokens: {lp.tokens}")
    expect(lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:]), f"token_logprobs: {lp.token_logprobs}")
    expect(lp.top_logprobs[0] is None and all(0 < len(t) <= 2 for t in lp.top_logprobs[1:]), f"top_logprobs: {lp.top_logprobs}")


@check
def embeddings(c, a):
    r = c.embeddings.create(model=EMBEDDER, input="failed ssh login")
    v = r.data[0].embedding
    expect(len(v) == 384 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3, "unit norm")
    r = c.embeddings.create(model=EMBEDDER, input=["ssh brute force", "banana bread", "ssh login failures"])
    expect([d.index for d in r.data] == [0, 1, 2], "indices")
    dot = lambda x, y: sum(p * q for p, q in zip(x.embedding, y.embedding))
    expect(dot(r.data[0], r.data[2]) > dot(r.data[0], r.data[1]), "related texts are closer")


@check
def errors(c, a):
    expect_error(openai.BadRequestError, 400, lambda: c.chat.completions.create(model=MODEL, messages=user("x"), temperature=5))
    expect_error(openai.BadRequestError, 400, lambda: c.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=100_000), code="context_length_exceeded")
    long_prompt = "alert " * 9000
    expect_error(openai.BadRequestError, 400, lambda: c.completions.create(model=MODEL, prompt=long_prompt), code="context_length_exceeded")
    expect_error(openai.NotFoundError, 404, lambda: c.chat.completions.create(model="no-such-model", messages=user("x")), code="model_not_found")
    bad = OpenAI(base_url=a.base_url, api_key="wrong-key", max_retries=0)
    expect_error(openai.AuthenticationError, 401, lambda: bad.models.list())
    expect_error(openai.AuthenticationError, 401, lambda: bad.chat.completions.create(model=MODEL, messages=user("x")))
    huge = "a" * (9 * 1024 * 1024)
    expect_error(openai.APIStatusError, 413, lambda: c.embeddings.create(model=EMBEDDER, input=huge))
    # Malformed JSON, which the SDK cannot send: plain HTTP.
    req = urllib.request.Request(a.base_url + "/chat/completions", data=b'{"messages": [', method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {a.api_key}"})
    try:
        urllib.request.urlopen(req, timeout=60)
        raise AssertionError("malformed JSON was accepted")
    except urllib.error.HTTPError as e:
        expect(e.code == 400, f"malformed JSON: {e.code}")
        body = json.load(e)
        expect(set(body["error"]) >= {"message", "type", "param", "code"}, f"malformed JSON body: {body}")


@check
def busy_and_loading(c, a):
    busy = OpenAI(base_url=a.busy_url, api_key="unused", max_retries=0, timeout=120)
    results = []

    def call():
        try:
            busy.completions.create(model=MODEL, prompt="Write a long report on intrusion detection:", max_tokens=48)
            results.append("ok")
        except openai.RateLimitError as e:
            results.append(e)
        except Exception as e:  # noqa: BLE001 - reported below
            results.append(e)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    other = [r for r in results if r != "ok" and not isinstance(r, openai.RateLimitError)]
    expect(not other, f"unexpected errors: {other}")
    expect(limited, f"six concurrent requests against a queue of one: no 429 ({results})")
    expect("ok" in results, "the admitted requests are served")
    e = limited[0]
    expect(e.status_code == 429 and int(e.response.headers.get("retry-after", "0")) >= 1, f"Retry-After: {e.response.headers}")
    expect(isinstance(e.body, dict) and "message" in e.body, f"429 body: {e.body}")
    # The busy server's embedding model never finishes loading.
    e = expect_error(openai.InternalServerError, 503, lambda: busy.embeddings.create(model=a.busy_embedder, input="x"))
    expect(e.response.headers.get("retry-after"), "503 carries Retry-After")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--busy-url", required=True)
    p.add_argument("--busy-embedder", required=True, help="the busy server's embedding model name")
    p.add_argument("--only", default="")
    a = p.parse_args()
    c = OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=300)
    failed = []
    selected = [fn for fn in CHECKS if not a.only or fn.__name__ in a.only.split(",")]
    for fn in selected:
        try:
            fn(c, a)
            print(f"ok   {fn.__name__}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failed.append(fn.__name__)
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}", flush=True)
        sys.exit(1)
    print(f"all {len(selected)} checks passed (openai {openai.__version__})", flush=True)


if __name__ == "__main__":
    main()
