//! The batching scheduler: one thread owns the model and its KV pool and runs continuous
//! batching. At each step it admits waiting requests, runs one forward pass over every running
//! sequence (decode tokens first, then prefill chunks within a token budget), samples each
//! sequence through [`Sequence::step`], streams the events, and retires finished or cancelled
//! sequences. A bounded queue sits in front; a full queue is reported at once, never waited on.
//!
//! Prompts are cached by prefix: a finished prompt's KV blocks stay in an LRU cache and a new
//! request that shares a prefix forks them (copy-on-write), skipping that part of the prefill.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::engine::error::EngineError;
use crate::engine::generate::{GenerationRequest, Sequence, StepEvent};
use crate::engine::loaded::LoadedModel;
use crate::engine::model::{Batch, KvPool, SeqKv};

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
}

/// Sends each event; a receiver that is gone is cancelled at the start of the next step.
fn send_all(events: Vec<(UnboundedSender<SeqEvent>, SeqEvent)>) {
    for (tx, ev) in events {
        let _ = tx.send(ev);
    }
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
    events: UnboundedSender<SeqEvent>,
    queued: Instant,
}

/// A cloneable handle for submitting requests.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    capacity: usize,
}

impl SchedulerHandle {
    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request within one decode step.
    pub fn submit(
        &self,
        req: GenerationRequest,
    ) -> Result<UnboundedReceiver<SeqEvent>, SubmitError> {
        let (events, rx) = unbounded_channel();
        self.depth.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            req,
            events,
            queued: Instant::now(),
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                match e {
                    TrySendError::Full(_) => Err(SubmitError::QueueFull(self.capacity)),
                    TrySendError::Disconnected(_) => Err(SubmitError::Stopped),
                }
            }
        }
    }

    /// Requests waiting to start.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Sequences being generated.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// Starts the scheduler thread for a model.
pub fn spawn(model: Arc<LoadedModel>, cfg: SchedulerConfig) -> SchedulerHandle {
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_capacity);
    let depth = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let handle = SchedulerHandle {
        tx,
        depth: depth.clone(),
        running: running.clone(),
        capacity: cfg.queue_capacity,
    };
    std::thread::Builder::new()
        .name("ward-scheduler".into())
        .spawn(move || Worker::new(model, cfg, rx, depth, running).run())
        .expect("spawning the scheduler thread");
    handle
}

struct Running {
    seq: Sequence,
    events: UnboundedSender<SeqEvent>,
    registered: bool,
    /// KV positions reserved for it at admission (prompt plus max_tokens).
    reserved: usize,
}

struct CachedPrefix {
    tokens: Vec<u32>,
    kv: SeqKv,
    last_used: u64,
}

struct Worker {
    model: Arc<LoadedModel>,
    cfg: SchedulerConfig,
    rx: Receiver<Job>,
    depth: Arc<AtomicUsize>,
    running_count: Arc<AtomicUsize>,
    pool: KvPool,
    running: Vec<Running>,
    pending: VecDeque<Job>,
    prefixes: Vec<CachedPrefix>,
    clock: u64,
    reserved: usize,
}

impl Worker {
    fn new(
        model: Arc<LoadedModel>,
        cfg: SchedulerConfig,
        rx: Receiver<Job>,
        depth: Arc<AtomicUsize>,
        running_count: Arc<AtomicUsize>,
    ) -> Self {
        let pool = model.model.new_pool(cfg.kv_tokens);
        Self {
            model,
            cfg,
            rx,
            depth,
            running_count,
            pool,
            running: Vec::new(),
            pending: VecDeque::new(),
            prefixes: Vec::new(),
            clock: 0,
            reserved: 0,
        }
    }

    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.pending.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.pending.push_back(job),
                    Err(_) => return, // every handle dropped
                }
            }
            while self.pending.len() < self.cfg.max_running {
                match self.rx.try_recv() {
                    Ok(job) => self.pending.push_back(job),
                    Err(_) => break,
                }
            }
            self.admit();
            self.running_count
                .store(self.running.len(), Ordering::SeqCst);
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn need(req: &GenerationRequest) -> usize {
        req.prompt.len() + req.max_tokens
    }

    /// Moves waiting jobs into the running set while there is room in the batch and the cache.
    fn admit(&mut self) {
        let ctx = self.model.context_length();
        while self.running.len() < self.cfg.max_running {
            let Some(job) = self.pending.pop_front() else {
                break;
            };
            let need = Self::need(&job.req);
            if let Err(e) = job.req.check(ctx).and_then(|()| {
                if need > self.pool.capacity_tokens() {
                    Err(EngineError::ContextOverflow {
                        prompt: job.req.prompt.len(),
                        max_tokens: job.req.max_tokens,
                        context: self.pool.capacity_tokens(),
                    })
                } else {
                    Ok(())
                }
            }) {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                let _ = job.events.send(SeqEvent::Error(e));
                continue;
            }
            // Make room: evict cached prefixes, else wait for running sequences to finish.
            while self.reserved + need + self.prefix_tokens() > self.pool.capacity_tokens()
                && !self.prefixes.is_empty()
            {
                self.evict_lru();
            }
            if self.reserved + need > self.pool.capacity_tokens() {
                self.pending.push_front(job);
                break;
            }
            self.depth.fetch_sub(1, Ordering::SeqCst);
            if job.events.is_closed() {
                continue;
            }
            let mut seq = match Sequence::new(job.req) {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.events.send(SeqEvent::Error(e));
                    continue;
                }
            };
            let cached = self.reuse_prefix(&mut seq);
            tracing::debug!(
                queued_ms = job.queued.elapsed().as_millis() as u64,
                cached,
                "admitted"
            );
            let reserved = need;
            self.reserved += reserved;
            let _ = job.events.send(SeqEvent::Started {
                prompt: seq.prompt_len(),
                cached,
            });
            self.running.push(Running {
                seq,
                events: job.events,
                registered: false,
                reserved,
            });
        }
    }

    fn prefix_tokens(&self) -> usize {
        self.prefixes.iter().map(|p| p.kv.len()).sum()
    }

    fn evict_lru(&mut self) {
        if let Some(i) = (0..self.prefixes.len()).min_by_key(|&i| self.prefixes[i].last_used) {
            let mut p = self.prefixes.swap_remove(i);
            self.pool.release(&mut p.kv);
        }
    }

    /// Forks the longest cached prefix of the prompt (leaving at least one token to run).
    fn reuse_prefix(&mut self, seq: &mut Sequence) -> usize {
        let prompt = &seq.tokens()[..seq.prompt_len()];
        let best = self
            .prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    i,
                    p.tokens
                        .iter()
                        .zip(prompt)
                        .take_while(|(a, b)| a == b)
                        .count()
                        .min(p.kv.len()),
                )
            })
            .max_by_key(|&(_, n)| n);
        let Some((i, n)) = best else { return 0 };
        let n = n.min(prompt.len() - 1);
        if n < 16 {
            return 0;
        }
        self.clock += 1;
        self.prefixes[i].last_used = self.clock;
        seq.kv = self.pool.fork(&self.prefixes[i].kv, n);
        seq.mark_cached(n);
        n
    }

    /// Keeps a finished prompt's blocks for later requests.
    fn register_prefix(&mut self, idx: usize) {
        self.running[idx].registered = true;
        let seq = &self.running[idx].seq;
        let n = seq.prompt_len();
        if n < 32 || self.cfg.prefix_cache_entries == 0 {
            return;
        }
        let tokens = seq.tokens()[..n].to_vec();
        if self.prefixes.iter().any(|p| p.tokens == tokens) {
            return;
        }
        let kv = self.pool.fork(&seq.kv, n);
        if self.prefixes.len() >= self.cfg.prefix_cache_entries {
            self.evict_lru();
        }
        self.clock += 1;
        self.prefixes.push(CachedPrefix {
            tokens,
            kv,
            last_used: self.clock,
        });
    }

    /// One forward pass over all running sequences.
    fn step(&mut self) {
        // Cancel sequences whose client went away.
        for r in &mut self.running {
            if r.events.is_closed() {
                r.seq.cancel();
            }
        }
        self.retire();
        if self.running.is_empty() {
            return;
        }
        let mut batch = Batch::default();
        let mut budget = self.cfg.max_batch_tokens.max(self.running.len());
        let mut wants = Vec::with_capacity(self.running.len());
        // Decoding sequences first (one token each), then prefill chunks.
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| self.running[i].seq.uncached().len() > 1);
        let mut take = vec![0usize; self.running.len()];
        for &i in &order {
            let un = self.running[i].seq.uncached().len();
            let n = un.min(budget);
            take[i] = n;
            budget -= n;
            if budget == 0 {
                break;
            }
        }
        for (i, r) in self.running.iter().enumerate() {
            let n = take[i];
            if n == 0 {
                continue;
            }
            let start = r.seq.cached();
            let un = r.seq.uncached();
            for (j, &t) in un[..n].iter().enumerate() {
                let last = j + 1 == n && n == un.len();
                batch.push(t, start + j, i, last);
            }
            wants.push((i, n, n == un.len()));
        }
        let mut kvs: Vec<SeqKv> = self
            .running
            .iter_mut()
            .map(|r| std::mem::take(&mut r.seq.kv))
            .collect();
        let result = self.model.model.forward(&batch, &mut self.pool, &mut kvs);
        for (r, kv) in self.running.iter_mut().zip(kvs) {
            r.seq.kv = kv;
        }
        let mut logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A failed pass fails every sequence in it: a fault of ward, not of a request.
                tracing::error!(error = %e, sequences = self.running.len(), "forward pass failed");
                let msg = e.to_string();
                let mut out = Vec::with_capacity(self.running.len());
                for r in &mut self.running {
                    r.seq.cancel();
                    out.push((r.events.clone(), SeqEvent::Failed(msg.clone())));
                }
                self.retire();
                send_all(out);
                return;
            }
        };
        let vocab = self.model.model.config().vocab;
        let mut row = 0;
        let mut out = Vec::with_capacity(self.running.len());
        for (i, n, complete) in wants {
            self.running[i].seq.mark_cached(n);
            if !complete {
                continue;
            }
            if !self.running[i].registered {
                self.register_prefix(i);
            }
            let r = &mut self.running[i];
            let ev = r.seq.step(
                &mut logits[row * vocab..(row + 1) * vocab],
                &self.model.tokenizer,
            );
            row += 1;
            out.push((r.events.clone(), SeqEvent::Token(ev)));
        }
        // Retire first, so that `running()` never counts a sequence whose client already has
        // its last token. A client gone by now is noticed at the start of the next step.
        self.retire();
        send_all(out);
    }

    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].seq.finish_reason().is_some() {
                let mut r = self.running.swap_remove(i);
                self.reserved -= r.reserved;
                self.pool.release(&mut r.seq.kv);
            } else {
                i += 1;
            }
        }
        self.running_count
            .store(self.running.len(), Ordering::SeqCst);
    }
}
