//! Templates matched in reverse: which rules can produce a given Redis key, and from which
//! column values (the key inspector's "produced by"). Pure.

use super::{Located, RuleSet, Template};

/// A rule template that renders a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    pub rule: String,
    /// The template's text, as written in the rule file.
    pub template: String,
    /// `(column, value)` per placeholder, when the key reads one way only; empty otherwise.
    pub fields: Vec<(String, String)>,
    /// Whether `fields` is the key's only reading.
    pub exact: bool,
    pub file: String,
    pub line: usize,
}

/// The rules whose key templates (and warm keys) can render `key` under `prefix`.
pub fn producers(rules: &RuleSet, prefix: &str, key: &str) -> Vec<Producer> {
    let mut out = Vec::new();
    for rule in &rules.rules {
        let warm = rule.warm.as_ref().map(|w| &w.key);
        let templates: Vec<&Located<Template>> = rule.keys.iter().chain(warm).collect();
        let mut seen = std::collections::HashSet::new();
        for t in templates {
            if !seen.insert(t.value.source.as_str()) {
                continue;
            }
            let (fields, exact) = match t.value.parse_key(key, prefix) {
                Some(f) => (f, true),
                None if crate::glob::glob_match(&t.value.family_pattern(prefix), key) => {
                    (Vec::new(), false)
                }
                None => continue,
            };
            out.push(Producer {
                rule: rule.name.clone(),
                template: t.value.source.clone(),
                fields,
                exact,
                file: t.at.file.display().to_string(),
                line: t.at.line,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> RuleSet {
        RuleSet::new(super::super::parse_file(std::path::Path::new("r.toml"), text).unwrap())
    }

    #[test]
    fn a_key_names_its_rule_and_the_values_that_render_it() {
        let set = rules(
            "[[rule]]\nname='course'\ntable='courses'\nkeys=['course:{id}', 'course-slug:{slug}']\n\
             [[rule]]\nname='lesson'\ntable='lessons'\nkeys=['lesson:{course_id}:{id}']\n",
        );
        let p = producers(&set, ":1:", ":1:course:42");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rule, "course");
        assert_eq!(p[0].template, "course:{id}");
        assert_eq!(p[0].fields, vec![("id".to_string(), "42".to_string())]);
        assert!(p[0].exact);
        assert_eq!((p[0].file.as_str(), p[0].line), ("r.toml", 4));

        let p = producers(&set, ":1:", ":1:lesson:7:3");
        assert_eq!(p[0].rule, "lesson");
        assert_eq!(
            p[0].fields,
            vec![
                ("course_id".to_string(), "7".to_string()),
                ("id".to_string(), "3".to_string())
            ]
        );
        assert!(producers(&set, ":1:", ":2:course:42").is_empty());
        assert!(producers(&set, ":1:", ":1:unknown:1").is_empty());
    }

    #[test]
    fn a_key_with_two_readings_is_matched_without_values() {
        let set = rules("[[rule]]\nname='pair'\ntable='t'\nkeys=['pair:{a}:{b}']\n");
        let p = producers(&set, "", "pair:x:y:z");
        assert_eq!(p.len(), 1);
        assert!(!p[0].exact);
        assert!(p[0].fields.is_empty());
    }
}
