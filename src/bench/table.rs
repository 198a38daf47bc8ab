//! Plain-text tables for the terminal: the engine report laid out like `llama-bench`'s markdown
//! table, and one row per concurrency level for an endpoint run.

use std::fmt::Write;

use super::endpoint::EndpointReport;
use super::engine::EngineReport;
use super::stats::Summary;

const MIB: f64 = 1024.0 * 1024.0;

/// The engine report: one row per test, then load time, peak RSS and decode bandwidth.
pub fn engine(r: &EngineReport) -> String {
    let mut s = String::new();
    let width = r.model.len().max(5);
    let par = format!(" x{}", r.parallel);
    let depth = match r.depth {
        0 => String::new(),
        d => format!(" @ d{d}"),
    };
    let rows: Vec<(String, f64, Option<f64>)> = [
        ("pp", r.pp, "", r.pp_tps, r.pp_tps_stdev),
        ("tg", r.tg, "", r.tg_tps, r.tg_tps_stdev),
        ("tg", r.tg, &par, r.tg_parallel_tps, r.tg_parallel_tps_stdev),
    ]
    .into_iter()
    .filter_map(|(test, n, suffix, mean, sd)| {
        Some((format!("{test}{n}{suffix}{depth}"), mean?, sd))
    })
    .collect();
    let tw = rows.iter().map(|(t, ..)| t.len()).max().unwrap_or(0).max(9);
    let _ = writeln!(
        s,
        "| {:<width$} | {:>10} | {:>7} | {:>tw$} | {:>18} |",
        "model", "size", "threads", "test", "t/s"
    );
    let _ = writeln!(
        s,
        "| {:-<width$} | {:->9}: | {:->6}: | {:->w$}: | {:->17}: |",
        "",
        "",
        "",
        "",
        "",
        w = tw - 1
    );
    let size = format!("{:.2} MiB", r.file_bytes as f64 / MIB);
    for (test, mean, sd) in rows {
        let tps = format!("{mean:.2} ± {:.2}", sd.unwrap_or(0.0));
        let _ = writeln!(
            s,
            "| {:<width$} | {size:>10} | {:>7} | {test:>tw$} | {tps:>18} |",
            r.model, r.threads
        );
    }
    let _ = write!(s, "\nload {:.2} s", r.load_s);
    if let Some(rss) = r.peak_rss_bytes {
        let _ = write!(s, ", peak RSS {:.1} MiB", rss as f64 / MIB);
    }
    if let Some(gbps) = r.decode_gbps {
        let _ = write!(
            s,
            ", decode reads {:.1} MB/token: {gbps:.1} GB/s",
            r.weight_bytes_per_token as f64 / 1e6
        );
        if let Some(bound) = r.memory_read_gbps {
            let _ = write!(
                s,
                " ({:.0}% of the {bound:.1} GB/s this machine reads with {} threads)",
                100.0 * gbps / bound,
                r.threads
            );
        }
    }
    let _ = writeln!(s, "; {} repetitions", r.reps);
    s
}

fn pcts(x: &Option<Summary>, digits: usize) -> String {
    match x {
        Some(x) => format!(
            "{:.digits$} / {:.digits$} / {:.digits$}",
            x.p50, x.p95, x.p99
        ),
        None => "-".into(),
    }
}

/// The endpoint report: one row per level, then the failures of each level that had any.
pub fn endpoint(r: &EndpointReport) -> String {
    let mut s = format!("{}  model {}\n\n", r.url, r.model);
    let _ = writeln!(
        s,
        "| {:>4} | {:>4} | {:>4} | {:>24} | {:>22} | {:>22} | {:>9} |",
        "conc",
        "reqs",
        "errs",
        "TTFT ms p50 / p95 / p99",
        "ITL ms p50 / p95 / p99",
        "tok/s/req p50/p95/p99",
        "agg tok/s"
    );
    let _ = writeln!(
        s,
        "| {:->3}: | {:->3}: | {:->3}: | {:->23}: | {:->21}: | {:->21}: | {:->8}: |",
        "", "", "", "", "", "", ""
    );
    for l in &r.levels {
        let _ = writeln!(
            s,
            "| {:>4} | {:>4} | {:>4} | {:>24} | {:>22} | {:>22} | {:>9.1} |",
            l.concurrency,
            l.requests,
            l.errors,
            pcts(&l.ttft_ms, 0),
            pcts(&l.itl_ms, 1),
            pcts(&l.tokens_per_s_per_request, 1),
            l.aggregate_tokens_per_s
        );
    }
    for l in r.levels.iter().filter(|l| l.errors > 0) {
        let kinds: Vec<String> = l
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        let _ = write!(
            s,
            "\nconcurrency {}: {} failed ({})",
            l.concurrency,
            l.errors,
            kinds.join(", ")
        );
        if let Some(first) = &l.error_sample {
            let _ = write!(s, "; first: {first}");
        }
    }
    if r.levels.iter().any(|l| l.errors > 0) {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::endpoint::LevelReport;

    #[test]
    fn bench_tables_show_every_figure() {
        let e = EngineReport {
            model: "m".into(),
            threads: 2,
            pp: 512,
            tg: 128,
            reps: 3,
            pp_tps: Some(500.0),
            pp_tps_stdev: Some(2.5),
            tg_tps: Some(200.0),
            tg_tps_stdev: Some(1.0),
            parallel: 8,
            depth: 0,
            tg_parallel_tps: Some(640.0),
            tg_parallel_tps_stdev: Some(4.0),
            load_s: 0.05,
            peak_rss_bytes: Some(150 * 1024 * 1024),
            file_bytes: 100 * 1024 * 1024,
            weight_bytes_per_token: 98_000_000,
            decode_gbps: Some(19.6),
            memory_read_gbps: Some(24.5),
        };
        let t = engine(&e);
        for want in [
            "pp512",
            "500.00 ± 2.50",
            "tg128",
            "200.00 ± 1.00",
            "tg128 x8",
            "640.00 ± 4.00",
            "100.00 MiB",
            "19.6 GB/s (80% of the 24.5 GB/s this machine reads with 2 threads)",
            "peak RSS 150.0 MiB",
        ] {
            assert!(t.contains(want), "{want:?} missing from\n{t}");
        }
        let deep = engine(&EngineReport {
            depth: 2048,
            ..e.clone()
        });
        for want in ["pp512 @ d2048", "tg128 x8 @ d2048"] {
            assert!(deep.contains(want), "{want:?} missing from\n{deep}");
        }
        let summary = Summary::of(&[100.0, 200.0]);
        let level = LevelReport {
            concurrency: 4,
            requests: 8,
            errors: 1,
            errors_by_kind: [("429".to_string(), 1)].into(),
            error_sample: Some("429: slow down".into()),
            ttft_ms: summary,
            itl_ms: None,
            e2e_ms: summary,
            tokens_per_s_per_request: summary,
            aggregate_tokens_per_s: 42.0,
            completion_tokens: 10,
            wall_s: 1.0,
        };
        let r = EndpointReport {
            url: "u".into(),
            model: "m".into(),
            levels: vec![level],
        };
        let t = endpoint(&r);
        for want in ["150 / 195 / 199", "42.0", "429 ×1", "first: 429: slow down"] {
            assert!(t.contains(want), "{want:?} missing from\n{t}");
        }
    }
}
