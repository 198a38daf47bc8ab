//! Token sampling: penalties, top-k, top-p, min-p, temperature and a seeded RNG, plus the
//! log-probabilities reported to clients.
//!
//! The order follows llama.cpp's default chain: penalties → top-k → top-p → min-p →
//! temperature → draw. A temperature of 0 is greedy decoding. The same seed and inputs give the
//! same tokens.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::error::{EngineError, Result};

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`0`: off).
    pub top_k: usize,
    /// Nucleus sampling mass (`1`: off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the best one (`0`: off).
    pub min_p: f32,
    /// llama.cpp-style repetition penalty over the recent tokens (`1`: off).
    pub repetition_penalty: f32,
    /// OpenAI presence penalty (`0`: off).
    pub presence_penalty: f32,
    /// OpenAI frequency penalty (`0`: off).
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// RNG seed; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Rejects out-of-range values with the parameter's name.
    pub fn validate(&self) -> Result<()> {
        let bad = |param: &'static str, reason: &str| {
            Err(EngineError::InvalidParameter {
                param,
                reason: reason.to_string(),
            })
        };
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", "must be between 0 and 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be between 0 and 1");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", "must be a positive number");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty", "must be between -2 and 2");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty", "must be between -2 and 2");
        }
        Ok(())
    }
}

/// Log-probability of a chosen token and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// Log-probability of the chosen token.
    pub logprob: f32,
    /// The `k` most likely tokens with their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax statistics of a logit row: the maximum and the log of the partition function.
fn log_norm(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    max + sum.ln()
}

/// Indices of the `k` largest values, best first.
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| values[*b as usize].total_cmp(&values[*a as usize]);
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// The model's own log-probability of `chosen` and its `top` alternatives (raw distribution,
/// before any sampling transform), as OpenAI's `logprobs` reports them.
pub fn logprobs(logits: &[f32], chosen: u32, top: usize) -> TokenLogprob {
    let z = log_norm(logits);
    TokenLogprob {
        logprob: logits[chosen as usize] - z,
        top: top_k_indices(logits, top)
            .into_iter()
            .map(|i| (i, logits[i as usize] - z))
            .collect(),
    }
}

/// A sampler for one sequence; holds its RNG.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler with validated parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Ok(Self { params, rng })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `logits` is modified (penalties applied); `history` holds the
    /// tokens the penalties look at, oldest first.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_penalties(logits, history);
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        if p.top_k == 0 && p.top_p >= 1.0 {
            return self.draw_full(logits);
        }
        // Candidates, best first.
        let mut cand: Vec<u32> = if p.top_k > 0 {
            top_k_indices(logits, p.top_k)
        } else {
            nucleus_candidates(logits, p.top_p)
        };
        let max = logits[cand[0] as usize];
        let mut probs: Vec<f32> = cand
            .iter()
            .map(|&i| (logits[i as usize] - max).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        // top-p: shortest prefix with mass >= top_p.
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, pr) in probs.iter().enumerate() {
                acc += pr / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
            probs.truncate(keep);
        }
        // min-p relative to the best token (probs[0] is exp(0) = 1).
        if p.min_p > 0.0 {
            let keep = probs.iter().take_while(|&&pr| pr >= p.min_p).count().max(1);
            cand.truncate(keep);
            probs.truncate(keep);
        }
        // Temperature, then draw.
        let inv_t = 1.0 / p.temperature;
        let weights: Vec<f32> = cand
            .iter()
            .map(|&i| ((logits[i as usize] - max) * inv_t).exp())
            .collect();
        let sum: f32 = weights.iter().sum();
        let mut r = self.rng.r#gen::<f32>() * sum;
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return cand[i];
            }
            r -= w;
        }
        cand[cand.len() - 1]
    }

    /// Draws from the whole vocabulary (no top-k / top-p), with min-p and temperature, in two
    /// passes and without sorting.
    fn draw_full(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // min-p keeps tokens with probability >= min_p * p(best), i.e. logit >= max + ln(min_p).
        let cut = if p.min_p > 0.0 {
            max + p.min_p.ln()
        } else {
            f32::NEG_INFINITY
        };
        let inv_t = 1.0 / p.temperature;
        let weight = |l: f32| {
            if l >= cut {
                ((l - max) * inv_t).exp()
            } else {
                0.0
            }
        };
        let sum: f32 = logits.iter().map(|&l| weight(l)).sum();
        let mut r = self.rng.r#gen::<f32>() * sum;
        let mut last = argmax(logits);
        for (i, &l) in logits.iter().enumerate() {
            let w = weight(l);
            if w > 0.0 {
                if r < w {
                    return i as u32;
                }
                r -= w;
                last = i as u32;
            }
        }
        last
    }

    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
        let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for &t in recent {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &c) in &counts {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
            *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Tokens that can be in the top-p nucleus, best first, without sorting the whole vocabulary:
/// tokens within a probability floor are sorted, and the floor is lowered until their mass
/// reaches `top_p`. Every excluded token is less likely than every included one, so the nucleus
/// is a prefix of the result.
fn nucleus_candidates(logits: &[f32], top_p: f32) -> Vec<u32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    for floor in [1e-3f32, 1e-5, 1e-7] {
        let cut = max + (floor * total).ln();
        let mut cand: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| logits[i as usize] >= cut)
            .collect();
        let mass: f32 = cand
            .iter()
            .map(|&i| (logits[i as usize] - max).exp())
            .sum::<f32>()
            / total;
        if mass >= top_p.min(0.9999) {
            cand.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
            return cand;
        }
    }
    top_k_indices(logits, logits.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut l = logits();
        let want = argmax(&l);
        assert_eq!(
            Sampler::new(SamplingParams::greedy())
                .unwrap()
                .sample(&mut l, &[]),
            want
        );
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = SamplingParams {
            temperature: 1.5,
            seed: Some(42),
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&p), draw(&p));
        let other = SamplingParams {
            seed: Some(43),
            ..p.clone()
        };
        assert_ne!(draw(&p), draw(&other));
    }

    #[test]
    fn top_k_restricts() {
        let p = SamplingParams {
            top_k: 3,
            seed: Some(1),
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        let l = logits();
        let allowed = top_k_indices(&l, 3);
        for _ in 0..200 {
            assert!(allowed.contains(&s.sample(&mut l.clone(), &[])));
        }
    }

    #[test]
    fn top_p_and_min_p_restrict() {
        let mut l = vec![0.0f32; 10];
        l[3] = 10.0;
        l[5] = 9.0;
        for p in [
            SamplingParams {
                top_p: 0.5,
                seed: Some(3),
                ..Default::default()
            },
            SamplingParams {
                min_p: 0.5,
                seed: Some(3),
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(p).unwrap();
            for _ in 0..100 {
                assert_eq!(s.sample(&mut l.clone(), &[]), 3);
            }
        }
    }

    #[test]
    fn penalties_change_choice() {
        let mut l = vec![5.0, 4.9, 0.0];
        let p = SamplingParams {
            temperature: 0.0,
            frequency_penalty: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        assert_eq!(s.sample(&mut l, &[0]), 1);
        let mut l = vec![5.0, 4.9, 0.0];
        let p = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.1,
            ..Default::default()
        };
        assert_eq!(Sampler::new(p).unwrap().sample(&mut l, &[0]), 1);
    }

    #[test]
    fn logprobs_normalised() {
        let l = logits();
        let lp = logprobs(&l, 5, 4);
        let total: f32 = l
            .iter()
            .map(|&x| (x - l[5] + lp.logprob).exp())
            .sum::<f32>();
        assert!((total.ln()).abs() < 1e-3, "sum of probabilities is {total}");
        assert_eq!(lp.top.len(), 4);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    #[test]
    fn rejects_bad_params() {
        assert!(
            Sampler::new(SamplingParams {
                temperature: -1.0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
