//! Configuration from the environment: every key can be set as `CACHEWARDEN_<SECTION>_<KEY>`
//! (`CACHEWARDEN_REDIS_KEY_PREFIX`, `CACHEWARDEN_MONITOR_MAX_LAG`; top-level keys as
//! `CACHEWARDEN_RULES_DIR`), over the file. Values are read as TOML when they are numbers,
//! booleans or arrays (`CACHEWARDEN_KAFKA_TOPICS='["a","b"]'`) and as strings otherwise; a
//! key the file sets as a string stays a string. Variables of other names
//! (`CACHEWARDEN_CONFIG`) are not configuration keys. Pure.

/// The sections a variable can name.
pub const SECTIONS: [&str; 10] = [
    "source", "postgres", "redis", "status", "api", "worker", "journal", "monitor", "log", "kafka",
];

/// Top-level keys.
const TOP_LEVEL: [&str; 1] = ["rules_dir"];

/// One variable applied: its section (`""` at top level), key and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub section: String,
    pub key: String,
    pub var: String,
}

/// The `(section, key)` a variable names, if it names one.
pub fn key_of(var: &str) -> Option<(&'static str, String)> {
    let name = var.strip_prefix("CACHEWARDEN_")?.to_ascii_lowercase();
    if TOP_LEVEL.contains(&name.as_str()) {
        return Some(("", name));
    }
    SECTIONS.iter().find_map(|s| {
        let key = name.strip_prefix(s)?.strip_prefix('_')?;
        (!key.is_empty()).then(|| (*s, key.to_string()))
    })
}

/// The TOML value of `raw` for a key whose file value (if any) is `existing`.
fn typed(raw: &str, existing: Option<&toml::Value>) -> toml::Value {
    if matches!(existing, Some(toml::Value::String(_))) {
        return toml::Value::String(raw.to_string());
    }
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Applies the configuration variables among `vars` to `table` (empty values are ignored);
/// returns what was applied, in name order.
pub fn overlay(table: &mut toml::Table, vars: &[(String, String)]) -> Vec<Applied> {
    let mut vars: Vec<&(String, String)> = vars.iter().filter(|(_, v)| !v.is_empty()).collect();
    vars.sort();
    let topics_set = vars.iter().any(|(k, _)| k == "CACHEWARDEN_KAFKA_TOPICS");
    let mut applied = Vec::new();
    for (var, raw) in vars {
        let Some((section, key)) = key_of(var) else {
            continue;
        };
        let target = if section.is_empty() {
            &mut *table
        } else {
            // [kafka] without a file section is only made when the environment names the
            // topics too (a lone broker list for a PostgreSQL source is not a Kafka source).
            if section == "kafka" && !table.contains_key("kafka") && !topics_set {
                continue;
            }
            match table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(t) => t,
                _ => continue,
            }
        };
        let value = typed(raw, target.get(&key));
        target.insert(key.clone(), value);
        applied.push(Applied {
            section: section.to_string(),
            key,
            var: var.clone(),
        });
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_name_sections_and_keys() {
        assert_eq!(
            key_of("CACHEWARDEN_REDIS_KEY_PREFIX"),
            Some(("redis", "key_prefix".into()))
        );
        assert_eq!(
            key_of("CACHEWARDEN_MONITOR_MAX_LAG"),
            Some(("monitor", "max_lag".into()))
        );
        assert_eq!(
            key_of("CACHEWARDEN_RULES_DIR"),
            Some(("", "rules_dir".into()))
        );
        assert_eq!(key_of("CACHEWARDEN_CONFIG"), None);
        assert_eq!(key_of("CACHEWARDEN_REDIS"), None);
        assert_eq!(key_of("OTHER_REDIS_URL"), None);
    }

    #[test]
    fn values_are_typed_like_the_file() {
        let mut t: toml::Table =
            toml::from_str("[redis]\nurl = \"redis://a\"\nkey_prefix = \"x\"\n").unwrap();
        let vars = [
            ("CACHEWARDEN_REDIS_URL".to_string(), "redis://b".to_string()),
            ("CACHEWARDEN_REDIS_KEY_PREFIX".to_string(), "1".to_string()),
            (
                "CACHEWARDEN_REDIS_TIMEOUT_MS".to_string(),
                "250".to_string(),
            ),
            (
                "CACHEWARDEN_MONITOR_KEYSPACE_EVENTS".to_string(),
                "true".to_string(),
            ),
            ("CACHEWARDEN_POSTGRES_SLOT".to_string(), "".to_string()),
            ("CACHEWARDEN_CONFIG".to_string(), "x.toml".to_string()),
        ];
        let applied = overlay(&mut t, &vars);
        assert_eq!(applied.len(), 4, "{applied:?}");
        assert_eq!(t["redis"]["url"].as_str(), Some("redis://b"));
        assert_eq!(
            t["redis"]["key_prefix"].as_str(),
            Some("1"),
            "a string in the file stays one"
        );
        assert_eq!(t["redis"]["timeout_ms"].as_integer(), Some(250));
        assert_eq!(t["monitor"]["keyspace_events"].as_bool(), Some(true));
        assert!(!t.contains_key("postgres"), "empty values are ignored");
    }
}
