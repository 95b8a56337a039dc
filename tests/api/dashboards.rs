//! The Grafana dashboards and alert rules in `dashboards/` name only metrics
//! that the code declares, so a renamed metric cannot silently blank a panel
//! or disarm an alert.

use std::collections::BTreeSet;

use questboard_core::metrics::ALL;

fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("questboard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        found.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    found
}

fn known(name: &str) -> bool {
    ALL.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| ALL.contains(&base))
        })
}

#[test]
fn dashboards_and_alerts_use_only_declared_metrics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("dashboards/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<serde_json::Value>(&text).expect("dashboard is valid JSON");
        }
        let names = referenced_metrics(&text);
        // The dashboard's uid "questboard-api" is not a metric; metric names
        // all carry an underscore after the prefix, which the scan requires.
        let unknown: Vec<_> = names.iter().filter(|n| !known(n)).collect();
        assert!(
            unknown.is_empty(),
            "{}: unknown metrics {unknown:?}",
            path.display()
        );
        checked += names.len();
    }
    assert!(
        checked >= 8,
        "expected the dashboards to reference the metrics"
    );
}
