//! `ward pull`, `ward import` and `ward models`: the catalog's command-line handlers, free of
//! clap so that `cli/mod.rs` only has to parse flags and call them.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::catalog::{self, Listed, PullOptions};

/// `ward pull NAME`: fetches a catalog entry (or `hf:OWNER/REPO/FILE.gguf`) and prints its path.
/// Nothing is downloaded when the entry is already present and verified.
pub fn cmd_pull(name: &str) -> anyhow::Result<()> {
    let path = catalog::pull(name, &PullOptions::default())
        .with_context(|| format!("cannot pull {name}"))?;
    println!("{}", path.display());
    Ok(())
}

/// `ward import PATH [--name NAME]`: registers a hand-copied GGUF file under a name.
pub fn cmd_import(path: &Path, name: Option<&str>) -> anyhow::Result<()> {
    let model =
        catalog::import(path, name).with_context(|| format!("cannot import {}", path.display()))?;
    println!(
        "imported {} ({}, {} B, sha256 {})",
        model.name,
        model.path.display(),
        model.size,
        model.sha256
    );
    Ok(())
}

/// `ward models [--json]`: lists catalog entries and imported models with their state. JSON is
/// `{"models": [{"name","kind","path","size","sha256","present","verified","origin"}]}`.
pub fn cmd_models(json: bool) -> anyhow::Result<()> {
    let rows = catalog::list().context("cannot list models")?;
    let mut out = std::io::stdout().lock();
    if json {
        #[derive(Serialize)]
        struct Models<'a> {
            models: &'a [Listed],
        }
        serde_json::to_writer_pretty(&mut out, &Models { models: &rows })?;
        writeln!(out)?;
    } else {
        out.write_all(table(&rows).as_bytes())?;
    }
    Ok(())
}

/// The aligned text table of `ward models`.
fn table(rows: &[Listed]) -> String {
    let header = ["NAME", "KIND", "SIZE", "STATE", "PATH"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let state = match (r.present, r.verified) {
                (true, true) => "verified",
                (true, false) => "UNVERIFIED",
                (false, _) => "-",
            };
            [
                r.name.clone(),
                r.kind.clone(),
                human_size(r.size),
                state.to_owned(),
                r.path.display().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i + 1 == cols.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut text = line(header);
    for row in &cells {
        text.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    text
}

/// Bytes as `98.4 MB` (decimal units, as pip and most download tools print).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(98_362_432), "98.4 MB");
        assert_eq!(human_size(1_117_320_768), "1.1 GB");
    }

    #[test]
    fn table_columns_align() {
        let row = |name: &str, present| Listed {
            name: name.into(),
            kind: "chat".into(),
            path: format!("/h/models/{name}.gguf").into(),
            size: 1_000_000,
            sha256: "0".repeat(64),
            present,
            verified: present,
            origin: catalog::Origin::Catalog,
        };
        let text = table(&[row("a", true), row("much-longer-name", false)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |l: &str| l.find("chat").or_else(|| l.find("KIND"));
        assert_eq!(col(lines[0]), col(lines[1]));
        assert_eq!(col(lines[1]), col(lines[2]));
        assert!(lines[1].contains("verified") && lines[2].contains(" - "));
    }
}
