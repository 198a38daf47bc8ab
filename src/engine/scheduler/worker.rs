//! The scheduler's worker: the one thread that owns the model and its KV pool. Each turn it
//! takes waiting jobs from the queue, admits those whose KV reservation fits, runs one forward
//! pass over every running sequence (decode tokens first, then prefill chunks within the token
//! budget), samples, retires finished or cancelled sequences, and only then sends the events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::error::EngineError;
use crate::engine::generate::{GenerationRequest, Sequence};
use crate::engine::loaded::LoadedModel;
use crate::engine::model::kv::BLOCK;
use crate::engine::model::{Batch, KvPool, SeqKv};
use crate::engine::sampler::{self, TokenLogprob};

use super::prefix::{PrefixCache, blocks_for};
use super::{Gauges, Job, SchedulerConfig, SeqEvent};

/// Prompt tokens a scoring job runs per step (each needs a full row of logits).
const SCORE_CHUNK: usize = 64;

/// Prompt tokens per step while other sequences decode: one piece of the engine's prefill
/// ([`PIECE`](crate::engine::model::PIECE)), which runs long prompts in pieces of this size anyway.
const MIXED_PREFILL: usize = crate::engine::model::PIECE;

struct Running {
    seq: Sequence,
    events: UnboundedSender<SeqEvent>,
    registered: bool,
    /// KV positions reserved for it at admission (prompt plus max_tokens).
    reserved: usize,
    /// A scoring job: alternatives per token, and the scores so far.
    score: Option<(usize, Vec<Option<TokenLogprob>>)>,
}

pub(super) struct Worker {
    model: Arc<LoadedModel>,
    cfg: SchedulerConfig,
    rx: Receiver<Job>,
    gauges: Arc<Gauges>,
    pool: KvPool,
    running: Vec<Running>,
    pending: VecDeque<Job>,
    prefixes: PrefixCache,
    /// KV positions reserved by the running sequences.
    reserved: usize,
}

impl Worker {
    pub(super) fn new(
        model: Arc<LoadedModel>,
        cfg: SchedulerConfig,
        rx: Receiver<Job>,
        gauges: Arc<Gauges>,
    ) -> Self {
        let pool = model.model.new_pool(cfg.kv_tokens);
        let prefixes = PrefixCache::new(cfg.prefix_cache_entries);
        Self {
            model,
            cfg,
            rx,
            gauges,
            pool,
            running: Vec::new(),
            pending: VecDeque::new(),
            prefixes,
            reserved: 0,
        }
    }

    pub(super) fn run(mut self) {
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
            self.gauges
                .running
                .store(self.running.len(), Ordering::SeqCst);
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// KV positions a request may fill: its prompt plus `max_tokens`, in whole blocks.
    fn need(req: &GenerationRequest) -> usize {
        blocks_for(req.prompt.len() + req.max_tokens)
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
                self.gauges.depth.fetch_sub(1, Ordering::SeqCst);
                let _ = job.events.send(SeqEvent::Error(e));
                continue;
            }
            // Make room: evict cached prefixes, else wait for running sequences to finish.
            while self.reserved + need + self.prefixes.tokens() > self.pool.capacity_tokens()
                && !self.prefixes.is_empty()
            {
                self.prefixes.evict_lru(&mut self.pool);
            }
            if self.reserved + need > self.pool.capacity_tokens() {
                self.pending.push_front(job);
                break;
            }
            self.gauges.depth.fetch_sub(1, Ordering::SeqCst);
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
            // Scoring needs the logits of every prompt position, so it reuses no prefix.
            let score = job.score.map(|top| (top, vec![None]));
            let cached = match score {
                Some(_) => 0,
                None => self.prefixes.reuse(&mut self.pool, &mut seq),
            };
            tracing::debug!(
                queued_ms = job.queued.elapsed().as_millis() as u64,
                cached,
                "admitted"
            );
            self.gauges
                .cached
                .fetch_add(cached as u64, Ordering::Relaxed);
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
                score,
            });
        }
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
        let mut wants = Vec::with_capacity(self.running.len());
        let pending: Vec<(usize, bool)> = (self.running.iter())
            .map(|r| (r.seq.uncached().len(), r.score.is_some()))
            .collect();
        let take = plan_step(&pending, self.cfg.max_batch_tokens);
        for (i, r) in self.running.iter().enumerate() {
            let n = take[i];
            if n == 0 {
                continue;
            }
            let start = r.seq.cached();
            let un = r.seq.uncached();
            for (j, &t) in un[..n].iter().enumerate() {
                let logits = match r.score {
                    // Position p's logits score token p + 1.
                    Some(_) => start + j + 1 < r.seq.prompt_len(),
                    None => j + 1 == n && n == un.len(),
                };
                batch.push(t, start + j, i, logits);
            }
            wants.push((i, start, n, n == un.len()));
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
        for (i, start, n, complete) in wants {
            self.running[i].seq.mark_cached(n);
            if complete && !self.running[i].registered {
                self.running[i].registered = true;
                let room =
                    self.reserved + self.prefixes.tokens() + BLOCK <= self.pool.capacity_tokens();
                self.prefixes
                    .register(&mut self.pool, &self.running[i].seq, room);
            }
            let r = &mut self.running[i];
            if let Some((top, scores)) = &mut r.score {
                let prompt = &r.seq.tokens()[..r.seq.prompt_len()];
                for &next in prompt.iter().skip(start + 1).take(n) {
                    let l = &logits[row * vocab..(row + 1) * vocab];
                    scores.push(Some(sampler::logprobs(l, next, *top)));
                    row += 1;
                }
                if complete {
                    out.push((r.events.clone(), SeqEvent::Scored(std::mem::take(scores))));
                    r.seq.cancel(); // done: retired below
                }
                continue;
            }
            if !complete {
                continue;
            }
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
        self.gauges
            .running
            .store(self.running.len(), Ordering::SeqCst);
    }
}

/// Sends each event; a receiver that is gone is cancelled at the start of the next step.
fn send_all(events: Vec<(UnboundedSender<SeqEvent>, SeqEvent)>) {
    for (tx, ev) in events {
        let _ = tx.send(ev);
    }
}

/// How many of its uncached tokens each running sequence (`(uncached, scoring)`) feeds the next
/// forward pass, within `max_batch_tokens`: decoding sequences first (one token each), then
/// prompt chunks; while any sequence decodes, the chunks of a step stay within one prefill
/// piece, so that a long prompt holds the running streams up for one piece's time per token,
/// not the whole budget's.
fn plan_step(pending: &[(usize, bool)], max_batch_tokens: usize) -> Vec<usize> {
    let mut budget = max_batch_tokens.max(pending.len());
    let prefilling = |&(n, _): &(usize, bool)| n > 1;
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by_key(|&i| prefilling(&pending[i]));
    let mut prompt_budget = if pending.iter().all(prefilling) {
        budget
    } else {
        MIXED_PREFILL
    };
    let mut take = vec![0usize; pending.len()];
    for &i in &order {
        let (len, scoring) = pending[i];
        let chunk = if scoring { SCORE_CHUNK } else { usize::MAX };
        let mut n = len.min(budget).min(chunk);
        if prefilling(&pending[i]) {
            n = n.min(prompt_budget);
            prompt_budget -= n;
        }
        take[i] = n;
        budget -= n;
        if budget == 0 || (prefilling(&pending[i]) && prompt_budget == 0) {
            break;
        }
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_alone_take_the_whole_budget() {
        assert_eq!(plan_step(&[(900, false)], 512), [512]);
        assert_eq!(plan_step(&[(300, false), (400, false)], 512), [300, 212]);
    }

    #[test]
    fn prompts_beside_decodes_take_one_piece_a_step() {
        let take = plan_step(&[(900, false), (1, false), (1, false), (100, false)], 512);
        assert_eq!(take, [MIXED_PREFILL, 1, 1, 0]);
        let take = plan_step(&[(1, false), (50, false), (900, false)], 512);
        assert_eq!(take, [1, 50, MIXED_PREFILL - 50]);
    }

    #[test]
    fn decodes_come_first_and_scoring_runs_in_chunks() {
        // A budget smaller than the running set still gives every decoding sequence its token.
        assert_eq!(plan_step(&[(1, false); 4], 2), [1, 1, 1, 1]);
        assert_eq!(plan_step(&[(200, true)], 512), [SCORE_CHUNK]);
        assert_eq!(plan_step(&[(200, true), (1, false)], 512), [SCORE_CHUNK, 1]);
    }
}
