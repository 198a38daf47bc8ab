//! The batching scheduler: one thread ([`worker`]) owns the model and its KV pool and runs
//! continuous batching. At each step it admits waiting requests, runs one forward pass over every
//! running sequence (decode tokens first, then prefill chunks within a token budget), samples each
//! sequence through `Sequence::step`, retires finished or cancelled sequences, and streams the
//! events. A bounded queue sits in front; a full queue is reported at once, never waited on.
//!
//! Each admitted sequence reserves the KV blocks of its prompt plus `max_tokens`, so a running
//! batch never runs out of cache; a request that does not fit waits. Prompts are cached by
//! prefix ([`prefix`]): a new request that shares one forks its blocks and skips that prefill.

mod prefix;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::engine::error::EngineError;
use crate::engine::generate::{GenerationRequest, StepEvent};
use crate::engine::loaded::LoadedModel;
use crate::engine::sampler::TokenLogprob;

use worker::Worker;

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Requests waiting to start; more are refused (HTTP 429).
    pub queue_capacity: usize,
    /// Sequences decoded together.
    pub max_running: usize,
    /// Tokens per forward pass (decode tokens plus prefill chunks).
    pub max_batch_tokens: usize,
    /// KV cache size in positions, over all sequences and cached prefixes.
    pub kv_tokens: usize,
    /// Prompts kept for prefix reuse.
    pub prefix_cache_entries: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 64,
            max_running: 16,
            max_batch_tokens: 512,
            kv_tokens: 32_768,
            prefix_cache_entries: 16,
        }
    }
}

/// What a request's stream carries.
#[derive(Debug)]
pub enum SeqEvent {
    /// Prefill is about to start; `cached` prompt tokens came from the prefix cache.
    Started {
        /// Prompt tokens.
        prompt: usize,
        /// Of which reused from the prefix cache.
        cached: usize,
    },
    /// One sampled token.
    Token(StepEvent),
    /// The request was refused (context, parameters, grammar): the client's fault.
    Error(EngineError),
    /// The engine failed while running the request: ward's fault (details for the log).
    Failed(String),
    /// A scoring job's result: the log-probability of every prompt token given the ones before
    /// it, with alternatives; the first token has none.
    Scored(Vec<Option<TokenLogprob>>),
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    /// The scheduler thread is gone.
    #[error("the inference worker has stopped")]
    Stopped,
}

struct Job {
    req: GenerationRequest,
    /// Score the prompt (with this many alternatives per token) instead of generating.
    score: Option<usize>,
    events: UnboundedSender<SeqEvent>,
    queued: Instant,
}

/// Gauges the worker keeps up to date and handles read.
#[derive(Default)]
struct Gauges {
    /// Requests submitted and not yet admitted.
    depth: AtomicUsize,
    /// Sequences being generated.
    running: AtomicUsize,
    /// Prompt tokens taken from the prefix cache instead of being computed.
    cached: AtomicU64,
}

/// A cloneable handle for submitting requests.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: SyncSender<Job>,
    gauges: Arc<Gauges>,
    capacity: usize,
}

impl SchedulerHandle {
    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request within one decode step.
    pub fn submit(
        &self,
        req: GenerationRequest,
    ) -> Result<UnboundedReceiver<SeqEvent>, SubmitError> {
        self.enqueue(req, None)
    }

    /// Queues a scoring job: the prompt goes through the model and the answer is one
    /// [`SeqEvent::Scored`] with `top` alternatives per token. It shares the queue, the batch and
    /// the KV reservations with generation.
    pub fn score(
        &self,
        prompt: Vec<u32>,
        top: usize,
    ) -> Result<UnboundedReceiver<SeqEvent>, SubmitError> {
        self.enqueue(GenerationRequest::new(prompt, 0), Some(top))
    }

    fn enqueue(
        &self,
        req: GenerationRequest,
        score: Option<usize>,
    ) -> Result<UnboundedReceiver<SeqEvent>, SubmitError> {
        let (events, rx) = unbounded_channel();
        self.gauges.depth.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            req,
            score,
            events,
            queued: Instant::now(),
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.gauges.depth.fetch_sub(1, Ordering::SeqCst);
                match e {
                    TrySendError::Full(_) => Err(SubmitError::QueueFull(self.capacity)),
                    TrySendError::Disconnected(_) => Err(SubmitError::Stopped),
                }
            }
        }
    }

    /// Requests waiting to start.
    pub fn queue_depth(&self) -> usize {
        self.gauges.depth.load(Ordering::SeqCst)
    }

    /// Sequences being generated.
    pub fn running(&self) -> usize {
        self.gauges.running.load(Ordering::SeqCst)
    }

    /// Prompt tokens served from the prefix cache so far.
    pub fn cached_tokens(&self) -> u64 {
        self.gauges.cached.load(Ordering::Relaxed)
    }
}

/// Starts the scheduler thread for a model.
pub fn spawn(model: Arc<LoadedModel>, cfg: SchedulerConfig) -> SchedulerHandle {
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_capacity);
    let gauges = Arc::new(Gauges::default());
    let capacity = cfg.queue_capacity;
    let worker = Worker::new(model, cfg, rx, gauges.clone());
    std::thread::Builder::new()
        .name("ward-scheduler".into())
        .spawn(move || worker.run())
        .expect("spawning the scheduler thread");
    SchedulerHandle {
        tx,
        gauges,
        capacity,
    }
}
