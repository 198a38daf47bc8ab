//! ward: a private LLM appliance for security operations.
//!
//! Layers only look down: `api` → `service` → `engine`, `catalog` (and later
//! `knowledge`, `scan`, `siem`, `store`). The `engine` never imports the layers above it.

pub mod api;
pub mod bench;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod engine;
pub mod service;
