//! The README is part of the contract: its configuration reference lists exactly the settings
//! the config struct accepts, with their defaults, and its commands are the ones CI runs.

use gatehouse::config::RawConfig;
use serde_json::Value;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// `key -> row` for the rows of the configuration reference table.
fn reference_rows() -> Vec<(String, String)> {
    let text = readme();
    let start = text
        .find("<!-- configuration-reference")
        .expect("reference start marker");
    let end = text
        .find("<!-- end configuration-reference -->")
        .expect("reference end marker");
    text[start..end]
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `")?;
            let key = rest.split('`').next()?;
            Some((key.to_owned(), line.to_owned()))
        })
        .collect()
}

/// Configuration tables whose keys are fixed by the struct.
const FIXED_TABLES: [&str; 8] = [
    "api_tokens",
    "connections",
    "registration",
    "client_metadata",
    "mcp",
    "rate_limits",
    "key_rotation",
    "password_hashing",
];

#[test]
fn configuration_reference_lists_exactly_the_settings() {
    let defaults = serde_json::to_value(RawConfig::default()).expect("serialize");
    let Value::Object(defaults) = defaults else {
        panic!("object")
    };
    // Tables with fixed keys are documented key by key (`registration.enabled`); maps with
    // operator-chosen keys (`scopes`, `roles`) as one row.
    let mut flat = serde_json::Map::new();
    for (key, value) in &defaults {
        match value {
            Value::Object(table) if FIXED_TABLES.contains(&key.as_str()) => {
                for (sub, v) in table {
                    flat.insert(format!("{key}.{sub}"), v.clone());
                }
            }
            _ => {
                flat.insert(key.clone(), value.clone());
            }
        }
    }
    let defaults = flat;
    let mut documented: Vec<_> = reference_rows().into_iter().map(|(k, _)| k).collect();
    let mut settings: Vec<_> = defaults.keys().cloned().collect();
    documented.sort();
    settings.sort();
    assert_eq!(
        documented, settings,
        "README configuration reference vs RawConfig"
    );

    // Scalar defaults are written as they are.
    for (key, row) in reference_rows() {
        let shown = match &defaults[&key] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        assert!(
            row.contains(&format!("`{shown}`")),
            "default of {key} ({shown}) not in: {row}"
        );
    }
}

#[test]
fn readme_gives_the_two_commands_and_ci_runs_the_same_test_command() {
    let text = readme();
    assert!(text.contains("cargo run --release -- serve"));
    assert!(text.contains("\ntests/run "));
    let ci =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).expect(".ci/run");
    assert!(ci.lines().any(|l| l.trim() == "exec tests/run"), "{ci}");
}
