//! Tokenizers built from GGUF metadata alone (no tokenizer.json).
