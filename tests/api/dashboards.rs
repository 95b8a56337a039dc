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

/// Every metric the code declares is on some dashboard or in some alert:
/// a counter nobody charts is a counter nobody reads.
#[test]
fn every_declared_metric_is_charted_or_alerted_on() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/") {
        text.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("read"));
    }
    let used = referenced_metrics(&text);
    let unused: Vec<&&str> = ALL
        .iter()
        .filter(|name| {
            !used.contains(**name)
                && !["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| used.contains(&format!("{name}{suffix}")))
        })
        .collect();
    assert!(
        unused.is_empty(),
        "declared but on no dashboard: {unused:?}"
    );
}

/// Every template variable of a dashboard (but the data source) filters
/// at least one of its queries.
#[test]
fn every_dashboard_variable_is_used() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    for entry in std::fs::read_dir(&dir).expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let exprs: Vec<&str> = dashboard["panels"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .filter_map(|t| t["expr"].as_str())
            .collect();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = variable["name"].as_str().expect("name");
            if variable["type"] == "datasource" {
                continue;
            }
            assert!(
                exprs.iter().any(|e| e.contains(&format!("${name}"))),
                "{}: ${name} is defined and used by no query",
                path.display()
            );
        }
    }
}
