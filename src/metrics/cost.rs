//! Float counters (USD): the `metrics` facade only has integer counters, and money is
//! fractional, so these families are kept and rendered here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

type Labels = Vec<(&'static str, String)>;
/// Help text and the series of one family.
type Family = (&'static str, BTreeMap<Labels, f64>);

static FAMILIES: Mutex<BTreeMap<&'static str, Family>> = Mutex::new(BTreeMap::new());

/// Adds `v` (negative values are ignored) to a series; a zero still creates it.
pub fn add(name: &'static str, help: &'static str, labels: Labels, v: f64) {
    let mut m = FAMILIES.lock().unwrap_or_else(|p| p.into_inner());
    let family = m.entry(name).or_insert_with(|| (help, BTreeMap::new()));
    *family.1.entry(labels).or_insert(0.0) += v.max(0.0);
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends every family in the text exposition format.
pub fn render(out: &mut String) {
    let m = FAMILIES.lock().unwrap_or_else(|p| p.into_inner());
    for (name, (help, series)) in m.iter() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (labels, v) in series {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
            }
        }
    }
}
