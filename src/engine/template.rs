//! Chat templates: renders a GGUF's `tokenizer.chat_template` with minijinja the way Hugging Face does.
