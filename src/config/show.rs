//! `cachewarden config`: the effective configuration — every key, with the value the worker
//! uses and where it came from (the environment, the file and its line, or the default) —
//! with secrets redacted: passwords in URLs, `[api] token`, and Kafka properties that hold
//! passwords, secrets or keys. Pure.

use super::{diagnose, redact_url, Config};

/// Whether a Kafka property holds a secret.
fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password") || n.contains("secret") || n.ends_with(".key") || n.contains("token")
}

/// The effective configuration as TOML, each key commented with its source. `text` is the
/// file's text (empty without a file), `file` its name for the comments.
pub fn render(cfg: &Config, text: &str, file: &str) -> String {
    let value = match toml::Value::try_from(cfg) {
        Ok(toml::Value::Table(t)) => t,
        _ => return String::new(),
    };
    let mut out = format!(
        "# The effective configuration: {file} and the environment's CACHEWARDEN_* variables \
         over the defaults.\n"
    );
    let source = |section: &str, key: &str| -> String {
        if let Some(a) = cfg
            .from_env
            .iter()
            .find(|a| a.section == section && a.key == key)
        {
            return format!("env {}", a.var);
        }
        match diagnose::key_position(text, section, key) {
            Some((line, _)) => format!("{file}:{line}"),
            None => "default".to_string(),
        }
    };
    let shown = |section: &str, key: &str, v: &toml::Value| -> String {
        match v {
            toml::Value::String(s) if key == "url" => {
                toml::Value::String(redact_url(s)).to_string()
            }
            toml::Value::String(_) if section == "kafka.properties" && is_secret_property(key) => {
                "\"***\"".to_string()
            }
            toml::Value::String(_) if section == "api" && key == "token" => "\"***\"".to_string(),
            other => other.to_string(),
        }
    };
    let write_table = |out: &mut String, section: &str, t: &toml::Table| {
        for (k, v) in t.iter().filter(|(_, v)| !v.is_table()) {
            let bare = k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let name = if bare { k.clone() } else { format!("{k:?}") };
            out.push_str(&format!(
                "{name} = {}  # {}\n",
                shown(section, k, v),
                source(section, k)
            ));
        }
    };
    write_table(&mut out, "", &value);
    for (name, v) in value.iter() {
        let toml::Value::Table(t) = v else { continue };
        out.push_str(&format!("\n[{name}]\n"));
        write_table(&mut out, name, t);
        for (sub, sv) in t.iter() {
            if let toml::Value::Table(st) = sv {
                let section = format!("{name}.{sub}");
                out.push_str(&format!("\n[{section}]\n"));
                write_table(&mut out, &section, st);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_key_with_its_source_and_no_secret() {
        let text = "[postgres]\nurl = \"postgres://cw:s3cret@db/app\"\n[redis]\nurl = \"redis://r\"\n\
                    [source]\nkind = \"kafka\"\n[kafka]\nbrokers = \"b:9092\"\ntopics = [\"t\"]\n\
                    [kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"session.timeout.ms\" = \"6000\"\n";
        let vars = [
            (
                "CACHEWARDEN_REDIS_KEY_PREFIX".to_string(),
                ":1:".to_string(),
            ),
            ("CACHEWARDEN_API_TOKEN".to_string(), "t0ken-xyz".to_string()),
        ];
        let cfg = Config::from_toml(text, Path::new("c.toml"), &vars).unwrap();
        let out = render(&cfg, text, "c.toml");
        for line in [
            "url = \"postgres://cw:***@db/app\"  # c.toml:2",
            "key_prefix = \":1:\"  # env CACHEWARDEN_REDIS_KEY_PREFIX",
            "slot = \"cachewarden\"  # default",
            "\"sasl.password\" = \"***\"",
            "\"session.timeout.ms\" = \"6000\"  # c.toml:12",
            "[monitor]",
            "max_lag = \"30s\"  # default",
            "token = \"***\"  # env CACHEWARDEN_API_TOKEN",
        ] {
            assert!(out.contains(line), "{line:?} in\n{out}");
        }
        assert!(
            !out.contains("s3cret") && !out.contains("hunter2") && !out.contains("t0ken"),
            "{out}"
        );
        assert_eq!(cfg.api.token.as_deref(), Some("t0ken-xyz"));
    }
}
