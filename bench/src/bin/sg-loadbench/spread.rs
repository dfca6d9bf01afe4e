//! The same configuration run several times (`--runs`): each filter's own
//! cost in every run, its spread, and which goals held in every run;
//! written as `spread.md` beside the first run's report.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};

use crate::report::Report;

pub fn markdown(runs: &[Report]) -> String {
    let mut out = format!(
        "# Load benchmark, {} runs\n\nThe same configuration run {} times over in one \
         invocation, each run with its own ceilings; `loadbench.md` is the first. Each \
         filter's own cost, ns per packet over the ceiling of its run:\n\n",
        runs.len(),
        runs.len()
    );
    let header: String = (1..=runs.len()).map(|i| format!(" run {i} |")).collect();
    let rule: String = runs.iter().map(|_| "---:|").collect();
    let _ = writeln!(
        out,
        "| filter | rules | traffic |{header} min | max | max / min |\n|---|---:|---|{rule}---:|---:|---:|"
    );
    let Some(first) = runs.first() else {
        return out;
    };
    for rate in &first.rates {
        let costs: Vec<f64> = runs
            .iter()
            .filter_map(|run| {
                run.rates
                    .iter()
                    .find(|r| {
                        r.filter == rate.filter
                            && r.rules == rate.rules
                            && r.traffic == rate.traffic
                    })
                    .map(|r| r.over_ceiling_ns)
            })
            .collect();
        let min = costs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = costs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let each: String = costs.iter().map(|c| format!(" {c:.1} |")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |{each} {min:.1} | {max:.1} | {:.2} |",
            rate.filter.label(),
            rate.rules,
            rate.traffic.label(),
            max / min
        );
    }
    let _ = writeln!(out, "\n| goal |{header} met in |\n|---|{rule}---|");
    for goal in &first.goals {
        let found: Vec<_> = runs
            .iter()
            .filter_map(|run| run.goals.iter().find(|g| g.goal == goal.goal))
            .collect();
        let each: String = found.iter().map(|g| format!(" {:.3} |", g.value)).collect();
        let met = found.iter().filter(|g| g.met).count();
        let _ = writeln!(out, "| {} |{each} {met} of {} |", goal.goal, runs.len());
    }
    out
}

/// Prints the spread and writes `spread.md` into `dir`.
pub fn write(runs: &[Report], dir: &Path) -> Result<()> {
    let markdown = markdown(runs);
    println!("\n{markdown}");
    let path = dir.join("spread.md");
    fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
    println!("written: {}", path.display());
    Ok(())
}
