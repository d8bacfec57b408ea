//! Fuzzes the rule language: any text must parse into rules or positioned errors, never panic;
//! templates, family patterns and `when` conditions must not panic either.
#![no_main]

use std::path::Path;

use cachewarden::rules::{parse_file, Condition, Template, TemplateKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = Template::parse(text, TemplateKind::Key);
    if let Ok(c) = Condition::parse(text) {
        let _ = c.columns();
    }
    let _ = Template::parse(text, TemplateKind::Pattern).map(|t| t.family_pattern(":1:"));
    if let Err(errors) = parse_file(Path::new("fuzz.toml"), text) {
        for d in errors.0 {
            assert!(d.at.line >= 1, "errors carry a line: {d}");
        }
    }
});
