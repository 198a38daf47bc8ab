//! Command-line interface: flag definitions, help and dispatch in one place. Each subcommand's
//! work lives in its own module.

mod bench;
mod infer;
mod models;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The catalog model used when `--model` is not given.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// ward: a private LLM appliance for security operations.
#[derive(Parser, Debug)]
#[command(name = "ward", version, about, propagate_version = true)]
pub struct Cli {
    /// Compute threads (default: all cores).
    #[arg(long, global = true, env = "WARD_THREADS")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Benchmark the engine in-process, or load-test any OpenAI-compatible endpoint.
    Bench(bench::BenchArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Generate a completion of a raw prompt.
    Generate(GenerateArgs),
    /// Chat with a model interactively, streaming its answers.
    Chat(ChatArgs),
    /// Show how a model tokenizes a text.
    Tokenize(TokenizeArgs),
    /// Fetch a catalog model or data set (or `hf:OWNER/REPO/FILE.gguf`), verifying its sha256.
    Pull {
        /// Catalog name or `hf:` reference.
        name: String,
    },
    /// Register a .gguf file copied in by hand (air-gapped installs).
    Import {
        /// The .gguf file.
        path: PathBuf,
        /// Name to register it under (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List known models and data, with their verification state.
    Models {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which model to use.
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// A catalog name, an imported name, or a path to a .gguf file.
    #[arg(long, short = 'm', default_value = DEFAULT_MODEL)]
    pub model: String,
}

/// `ward generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The prompt (special tokens written in it are parsed).
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// RNG seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop strings.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// `ward chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// RNG seed.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `ward tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text to tokenize.
    #[arg(
        long,
        conflicts_with = "text_file",
        required_unless_present = "text_file"
    )]
    pub text: Option<String>,
    /// File whose contents to tokenize.
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    /// Do not add BOS/EOS.
    #[arg(long)]
    pub no_special: bool,
    /// Print `{"ids": [...], "pieces": [...]}`.
    #[arg(long)]
    pub json: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    if let Some(n) = cli.threads {
        crate::engine::kernels::set_threads(n);
    }
    let result = match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Generate(a) => infer::generate(a),
        Command::Chat(a) => infer::chat(a),
        Command::Tokenize(a) => infer::tokenize(a),
        Command::Pull { name } => models::cmd_pull(&name),
        Command::Import { path, name } => models::cmd_import(&path, name.as_deref()),
        Command::Models { json } => models::cmd_models(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
