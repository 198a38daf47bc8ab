//! The candle backend's KV cache and attention. Keys and values of every block of a [`KvPool`]
//! live on the device, per layer `[slots, kv_dim]` with slot `block * BLOCK + pos % BLOCK`, so
//! the pool's block tables, prefix forks and copy-on-write serve this backend unchanged; the
//! pool's own blocks are empty. Attention runs per sequence against that sequence's rows.

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::softmax_last_dim;

use crate::engine::error::{EngineError, Result};
use crate::engine::model::Batch;
use crate::engine::model::config::ModelConfig;
use crate::engine::model::kv::{BLOCK, KvPool, SeqKv};

use super::{CResult, device_err};

/// Keys and values of every block of one pool, on the device: per layer, `[slots, kv_dim]`.
pub(super) struct DeviceKv {
    slots: usize,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl DeviceKv {
    /// Makes room in `pool` for the batch, as the CPU engine does, and returns the device cache,
    /// grown to the blocks in use, with every block that `prepare` copied on write copied on the
    /// device as well.
    pub(super) fn prepare<'p>(
        pool: &'p mut KvPool,
        seqs: &mut [SeqKv],
        batch: &Batch,
        cfg: &ModelConfig,
        dev: &Device,
    ) -> Result<&'p DeviceKv> {
        let cap = pool.capacity_tokens();
        for (s, seq) in seqs.iter_mut().enumerate() {
            let Some((lo, hi)) = batch.span(s) else {
                continue;
            };
            let (before, kept) = (seq.blocks().to_vec(), lo.min(seq.len()));
            pool.prepare(seq, lo, hi + 1)?;
            // Mirror the copies now, before a later sequence's `prepare` can recycle a source.
            let copies: Vec<(u32, u32)> = (0..kept.div_ceil(BLOCK))
                .filter(|&i| before[i] != seq.blocks()[i])
                .map(|i| (before[i], seq.blocks()[i]))
                .collect();
            let need = seq
                .blocks()
                .iter()
                .max()
                .map_or(0, |&b| (b as usize + 1) * BLOCK);
            let kv = Self::of(pool, cfg, dev)?;
            kv.reserve(need, cap, cfg, dev).map_err(device_err)?;
            kv.copy_blocks(&copies, cfg.kv_dim(), dev)
                .map_err(device_err)?;
        }
        Self::of(pool, cfg, dev).map(|kv| &*kv)
    }

    /// The device cache stored in `pool`, created (empty) on first use.
    fn of<'p>(pool: &'p mut KvPool, cfg: &ModelConfig, dev: &Device) -> Result<&'p mut Self> {
        let store = pool.backend_store();
        if store.is_none() {
            *store = Some(Box::new(Self {
                slots: 0,
                k: Vec::new(),
                v: Vec::new(),
            }));
        }
        store
            .as_mut()
            .and_then(|s| s.downcast_mut::<Self>())
            .filter(|kv| {
                kv.k.first().is_none_or(|t| {
                    kv.k.len() == cfg.n_layer
                        && t.dim(1).is_ok_and(|d| d == cfg.kv_dim())
                        && t.device().same_device(dev)
                })
            })
            .ok_or_else(|| EngineError::Device("the KV pool belongs to another model".into()))
    }

    /// Grows the tensors to hold at least `need` slots (doubling, at most `cap`).
    fn reserve(&mut self, need: usize, cap: usize, cfg: &ModelConfig, dev: &Device) -> CResult<()> {
        if need <= self.slots {
            return Ok(());
        }
        let slots = need.max((self.slots * 2).min(cap));
        let grow = |old: Option<&Tensor>| -> CResult<Tensor> {
            let t = Tensor::zeros((slots, cfg.kv_dim()), DType::F16, dev)?;
            if let Some(old) = old {
                t.slice_set(old, 0, 0)?;
            }
            Ok(t)
        };
        for t in [&mut self.k, &mut self.v] {
            *t = (0..cfg.n_layer)
                .map(|il| grow(t.get(il)))
                .collect::<CResult<_>>()?;
        }
        self.slots = slots;
        Ok(())
    }

    /// Copies whole blocks `from` to `to` in every layer.
    fn copy_blocks(&self, copies: &[(u32, u32)], kv_dim: usize, dev: &Device) -> CResult<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let rows = |f: fn(&(u32, u32)) -> u32| -> Vec<u32> {
            copies
                .iter()
                .flat_map(|c| (0..BLOCK as u32).map(move |j| f(c) * BLOCK as u32 + j))
                .collect()
        };
        let src = Tensor::new(rows(|c| c.0), dev)?;
        let dst = row_index(&rows(|c| c.1), kv_dim, dev)?;
        for t in self.k.iter().chain(&self.v) {
            t.scatter_set(&dst, &t.index_select(&src, 0)?, 0)?;
        }
        Ok(())
    }

    /// Stores layer `il`'s keys and values (`[n, kv_dim]`) of the batch's tokens.
    pub(super) fn write(&self, il: usize, plan: &Plan, k: &Tensor, v: &Tensor) -> CResult<()> {
        // Half-precision storage saturating at the largest finite half, as the CPU pool's.
        let half = |t: &Tensor| {
            t.clamp(-65504f32, 65504f32)?
                .to_dtype(DType::F16)?
                .contiguous()
        };
        self.k[il].scatter_set(&plan.write, &half(k)?, 0)?;
        self.v[il].scatter_set(&plan.write, &half(v)?, 0)
    }
}

/// A `[rows.len(), width]` index whose row `i` is `rows[i]` everywhere, for `scatter_set`.
fn row_index(rows: &[u32], width: usize, dev: &Device) -> CResult<Tensor> {
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|&r| std::iter::repeat_n(r, width))
        .collect();
    Tensor::from_vec(flat, (rows.len(), width), dev)
}

/// The cache slot of position `pos` of a sequence.
fn slot(seq: &SeqKv, pos: usize) -> u32 {
    seq.blocks()[pos / BLOCK] * BLOCK as u32 + (pos % BLOCK) as u32
}

/// What attention needs about one sequence of the batch.
struct SeqAttn {
    /// Its tokens' rows in the batch, in batch order (`None`: every row, in order).
    rows: Option<Tensor>,
    n: usize,
    /// Cache slots of positions `0..=hi`.
    slots: Tensor,
    /// Additive masks `[n, hi + 1]`: global layers, then sliding-window layers.
    mask: Tensor,
    mask_local: Option<Tensor>,
}

/// Where the batch's keys and values go, and what attention reads, built once per forward pass.
pub(super) struct Plan {
    /// `[n, kv_dim]` slot of each token, for `scatter_set`.
    write: Tensor,
    seqs: Vec<SeqAttn>,
    /// Puts the per-sequence outputs, concatenated in sequence order, back into batch order
    /// (`None` when they already are).
    unsort: Option<Tensor>,
}

impl Plan {
    /// Indices and masks for the batch, after [`DeviceKv::prepare`].
    pub(super) fn new(
        cfg: &ModelConfig,
        batch: &Batch,
        seqs: &[SeqKv],
        dev: &Device,
    ) -> CResult<Self> {
        let (mut plans, mut order) = (Vec::new(), Vec::with_capacity(batch.len()));
        for (s, seq) in seqs.iter().enumerate() {
            let Some((_, hi)) = batch.span(s) else {
                continue;
            };
            let rows: Vec<u32> = (0..batch.len() as u32)
                .filter(|&t| batch.seq[t as usize] == s)
                .collect();
            let len = hi + 1;
            let mask = |window: Option<usize>| {
                let mut m = vec![f32::NEG_INFINITY; rows.len() * len];
                for (i, &t) in rows.iter().enumerate() {
                    let p = batch.pos[t as usize];
                    let lo = window.map_or(0, |w| (p + 1).saturating_sub(w.max(1)));
                    m[i * len + lo..=i * len + p].fill(0.0);
                }
                Tensor::from_vec(m, (rows.len(), len), dev)
            };
            let slots: Vec<u32> = (0..len).map(|p| slot(seq, p)).collect();
            plans.push(SeqAttn {
                n: rows.len(),
                slots: Tensor::new(slots, dev)?,
                mask: mask(None)?,
                mask_local: cfg.sliding_window.map(|w| mask(Some(w))).transpose()?,
                rows: (rows.len() < batch.len())
                    .then(|| Tensor::new(rows.as_slice(), dev))
                    .transpose()?,
            });
            order.extend(rows);
        }
        let unsort = if order.iter().enumerate().all(|(i, &t)| i == t as usize) {
            None
        } else {
            let mut inverse = vec![0u32; order.len()];
            for (i, &t) in order.iter().enumerate() {
                inverse[t as usize] = i as u32;
            }
            Some(Tensor::new(inverse, dev)?)
        };
        let write: Vec<u32> = (0..batch.len())
            .map(|t| slot(&seqs[batch.seq[t]], batch.pos[t]))
            .collect();
        Ok(Self {
            write: row_index(&write, cfg.kv_dim(), dev)?,
            seqs: plans,
            unsort,
        })
    }
}

/// Attention of every query row of `q` (`[n, q_dim]`, after RoPE) against its sequence's cache
/// in layer `il`; returns `[n, q_dim]` in batch order.
pub(super) fn attention(
    c: &ModelConfig,
    il: usize,
    q: &Tensor,
    kv: &DeviceKv,
    plan: &Plan,
) -> CResult<Tensor> {
    let (hd, nkv, group) = (c.head_dim, c.n_kv_head, c.n_head / c.n_kv_head);
    let mut outs = Vec::with_capacity(plan.seqs.len());
    for p in &plan.seqs {
        let len = p.slots.dim(0)?;
        let heads = |t: &Tensor, rows: usize, h: usize| -> CResult<Tensor> {
            t.reshape((rows, h, hd))?.transpose(0, 1)?.contiguous()
        };
        let qs = match &p.rows {
            Some(rows) => q.index_select(rows, 0)?,
            None => q.clone(),
        };
        // Query heads `g * group .. (g + 1) * group` share KV head `g`.
        let qs = heads(&qs, p.n, c.n_head)?.reshape((nkv, group * p.n, hd))?;
        let read = |t: &Tensor| t.index_select(&p.slots, 0)?.to_dtype(DType::F32);
        let ks = heads(&read(&kv.k[il])?, len, nkv)?;
        let vs = heads(&read(&kv.v[il])?, len, nkv)?;
        let mask = match (&p.mask_local, c.is_sliding(il)) {
            (Some(m), true) => m,
            _ => &p.mask,
        };
        let scores = (qs.matmul(&ks.t()?)? * c.attn_scale as f64)?
            .reshape((nkv, group, p.n, len))?
            .broadcast_add(mask)?;
        let probs = softmax_last_dim(&scores)?.reshape((nkv, group * p.n, len))?;
        let o = probs.matmul(&vs)?.reshape((c.n_head, p.n, hd))?;
        outs.push(o.transpose(0, 1)?.contiguous()?.reshape((p.n, c.q_dim()))?);
    }
    let att = Tensor::cat(&outs, 0)?;
    match &plan.unsort {
        Some(inverse) => att.index_select(inverse, 0),
        None => Ok(att),
    }
}
