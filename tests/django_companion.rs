//! The Django companion (`clients/django`): its pytest suite (pytest-django) against real
//! PostgreSQL, Redis and a cachewarden worker it starts from this build's binary; and the
//! package installing into a fresh virtualenv with one `pip install` from the repository.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn python() -> String {
    std::env::var("CACHEWARDEN_PYTHON")
        .expect("CACHEWARDEN_PYTHON: run scripts/ensure-python.sh (the README's test command does)")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_companions_tests_pass_against_a_running_worker() {
    let out = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"])
        .current_dir(root().join("clients/django"))
        .env("CACHEWARDEN_BIN", common::bin())
        .env("PYTHONPATH", root().join("clients/django/src"))
        .env("CWDJ_DB", "cwt_django_companion")
        .output()
        .expect("pytest runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "the companion's tests failed:\n{text}"
    );
    assert!(text.contains(" passed"), "{text}");
}

#[test]
fn the_package_installs_into_a_fresh_virtualenv_with_one_pip_install() {
    let venv = std::env::temp_dir().join("cachewarden-tests/django-venv");
    let _ = std::fs::remove_dir_all(&venv);
    let ok = Command::new(python())
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("venv");
    assert!(ok.success());
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(root().join("clients/django"))
        .output()
        .expect("pip runs");
    assert!(
        pip.status.success(),
        "pip install failed: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    let check = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import cachewarden_django, cachewarden_django.fill, django_redis; \
             from cachewarden_django import get_or_fill, invalidate; print('ok')",
        ])
        .output()
        .expect("python runs");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&venv);
}

#[test]
fn the_edurise_workload_leaves_nothing_stale_with_fenced_fills() {
    // A short run of examples/edurise-django (README has the long runs' figures).
    let out = Command::new("bash")
        .arg(root().join("examples/edurise-django/run.sh"))
        .env("CACHEWARDEN_BIN", common::bin())
        .env("CACHEWARDEN_PYTHON", python())
        .env("EDURISE_DB", "cwt_edurise_workload")
        .env("EDURISE_STATUS_PORT", common::free_port().to_string())
        .env("SECONDS_PER_RUN", "4")
        .env("RUNS", "1")
        .env("WRITE_SKEW", "zipf")
        .output()
        .expect("run.sh runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(runs.len(), 2, "{text}");
    let fenced = runs.iter().find(|r| r["mode"] == "fenced").unwrap();
    assert_eq!(fenced["stale_entries_after_quiescence"], 0, "{fenced}");
    assert_eq!(fenced["stale_reads_beyond_bound"], 0, "{fenced}");
    assert!(fenced["reads"].as_u64().unwrap() > 1000, "{fenced}");
    assert!(fenced["writes"].as_u64().unwrap() > 50, "{fenced}");
}
