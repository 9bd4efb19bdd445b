//! `confab_cost_usd_total`: a float counter. The `metrics` facade only has integer counters,
//! and cost in USD is fractional, so this one series family is kept and rendered here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use super::COST_USD_TOTAL;

static COST: Mutex<BTreeMap<(String, &'static str), f64>> = Mutex::new(BTreeMap::new());

/// Adds to the (model, outcome) series; a zero still creates the series.
pub fn add(model: &str, outcome: &'static str, usd: f64) {
    let mut m = COST.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry((model.to_string(), outcome)).or_insert(0.0) += usd.max(0.0);
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the family in the text exposition format.
pub fn render(out: &mut String) {
    let m = COST.lock().unwrap_or_else(|p| p.into_inner());
    if m.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {COST_USD_TOTAL} Cost in USD at configured prices, by model and outcome."
    );
    let _ = writeln!(out, "# TYPE {COST_USD_TOTAL} counter");
    for ((model, outcome), v) in m.iter() {
        let _ = writeln!(
            out,
            "{COST_USD_TOTAL}{{model=\"{}\",outcome=\"{outcome}\"}} {v}",
            escape(model)
        );
    }
}
