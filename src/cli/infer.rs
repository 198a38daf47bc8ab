//! `ward generate`, `ward chat` and `ward tokenize`: running a model from the terminal.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;

use crate::catalog;
use crate::engine::generate::{self, GenerationRequest};
use crate::engine::loaded::LoadedModel;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::{ChatMessage, MessageContent};

use super::{ChatArgs, GenerateArgs, ModelArg, TokenizeArgs};

/// Finds (and if needed fetches) the model file named on the command line.
fn model_path(arg: &ModelArg) -> anyhow::Result<PathBuf> {
    catalog::resolve_model(&arg.model)
}

fn open(arg: &ModelArg) -> anyhow::Result<LoadedModel> {
    let path = model_path(arg)?;
    LoadedModel::open(&path).with_context(|| format!("loading {}", path.display()))
}

/// `ward generate`.
pub fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let m = open(&a.model)?;
    let prompt = m.tokenizer.encode(&a.prompt, true, true);
    let mut req = GenerationRequest::new(prompt, a.max_tokens);
    req.sampling = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        seed: a.seed,
        ..SamplingParams::default()
    };
    req.stop = a.stop.clone();
    let mut pool = m.model.new_pool(req.prompt.len() + req.max_tokens);
    let start = std::time::Instant::now();
    let stdout = std::io::stdout();
    let json = a.json;
    let out = generate::generate(m.model.as_ref(), &m.tokenizer, &mut pool, req, |ev| {
        if !json {
            let mut o = stdout.lock();
            let _ = o.write_all(ev.text.as_bytes());
            let _ = o.flush();
        }
        true
    })?;
    let secs = start.elapsed().as_secs_f64();
    if json {
        let v = serde_json::json!({
            "text": out.text,
            "tokens": out.tokens,
            "finish_reason": out.finish.as_str(),
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.tokens.len(),
            "seconds": secs,
        });
        println!("{v}");
    } else {
        println!();
        eprintln!(
            "[{} prompt + {} generated tokens in {secs:.2}s, finish: {}]",
            out.prompt_tokens,
            out.tokens.len(),
            out.finish.as_str()
        );
    }
    Ok(())
}

fn message(role: &str, text: String) -> ChatMessage {
    ChatMessage {
        role: role.to_string(),
        content: Some(MessageContent::Text(text)),
        tool_calls: None,
        tool_call_id: None,
        name: None,
        reasoning_content: None,
    }
}

/// `ward chat`: a read-eval-print loop over the model's chat template.
pub fn chat(a: ChatArgs) -> anyhow::Result<()> {
    let m = open(&a.model)?;
    let mut history: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| message("system", s.clone()))
        .collect();
    let ctx = m.context_length();
    let mut pool = m.model.new_pool(ctx);
    let stdin = std::io::stdin();
    eprintln!("ward chat: type a message, an empty line or Ctrl-D to quit.");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        history.push(message("user", line.trim_end().to_string()));
        let prompt = m.template.render(&history, None, true)?;
        let ids = m.tokenizer.encode(&prompt, true, true);
        let max_tokens = a.max_tokens.min(ctx.saturating_sub(ids.len()));
        let mut req = GenerationRequest::new(ids, max_tokens);
        req.sampling = SamplingParams {
            temperature: a.temperature,
            seed: a.seed,
            ..SamplingParams::default()
        };
        let out = generate::generate(m.model.as_ref(), &m.tokenizer, &mut pool, req, |ev| {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(ev.text.as_bytes());
            let _ = o.flush();
            true
        })?;
        println!();
        history.push(message("assistant", out.text));
    }
}

/// `ward tokenize`.
pub fn tokenize(a: TokenizeArgs) -> anyhow::Result<()> {
    let text = match (&a.text, &a.text_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => anyhow::bail!("give --text or --text-file"),
    };
    let path = model_path(&a.model)?;
    let file = crate::engine::gguf::GgufFile::open(&path)?;
    let tok = crate::engine::tokenizer::Tokenizer::from_gguf(file.metadata())?;
    let ids = tok.encode(&text, !a.no_special, true);
    if a.json {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| String::from_utf8_lossy(&tok.token_bytes(i)).into_owned())
            .collect();
        println!("{}", serde_json::json!({ "ids": ids, "pieces": pieces }));
    } else {
        for &i in &ids {
            println!("{i:>8}  {:?}", tok.piece(i));
        }
    }
    Ok(())
}
