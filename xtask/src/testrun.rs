//! `cargo test` over every test binary, failing ones included, with a
//! summary at the end that names each failed test and binary.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::describe;

/// What one test binary of the run did.
#[derive(Default)]
struct Binary {
    /// As cargo names it: `tests/policy.rs`, `unittests src/lib.rs (sg_ctl)`.
    name: String,
    failed: Vec<String>,
    /// Whether it printed its `test result:` line, which a binary that
    /// crashed or was killed does not.
    finished: bool,
}

/// Runs `cmd`, a `cargo test --no-fail-fast`, showing its output as it
/// comes; fails, after the summary, when anything failed.
pub fn run_tests(cmd: &mut Command) -> Result<()> {
    let (reader, writer) = std::io::pipe().context("making a pipe for cargo test")?;
    cmd.stdout(writer.try_clone()?).stderr(writer);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    // Only the child may hold the pipe's writing end, or reading would not
    // end with it: `cmd` lets go of its copies.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut binaries: Vec<Binary> = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(name) = binary_name(&line) {
            binaries.push(Binary {
                name,
                ..Binary::default()
            });
        } else if let Some(binary) = binaries.last_mut() {
            if let Some(test) = failed_test(&line) {
                binary.failed.push(test.to_string());
            } else if line.starts_with("test result: ") {
                binary.finished = true;
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let failures: Vec<String> = binaries
        .iter()
        .flat_map(|b| {
            let crashed = (!b.finished).then(|| format!("{}: ended without a result", b.name));
            b.failed
                .iter()
                .map(|test| format!("{}: {test}", b.name))
                .chain(crashed)
        })
        .collect();
    let ran = binaries.len();
    println!();
    match (status.success(), failures.is_empty()) {
        (true, true) => {
            println!("==> every test passed, in {ran} test binaries");
            Ok(())
        }
        (_, false) => {
            println!("==> {} failed, of {ran} test binaries:", failures.len());
            for failure in &failures {
                println!("    {failure}");
            }
            bail!("{} failed (listed above)", failures.len())
        }
        (false, true) => bail!(
            "`{}` failed ({status}) with no test failing: it did not build, or a binary \
             did not start (see above)",
            describe(cmd)
        ),
    }
}

/// The binary a `Running …` or `Doc-tests …` line of cargo starts.
fn binary_name(line: &str) -> Option<String> {
    let line = line.trim_start();
    if let Some(krate) = line.strip_prefix("Doc-tests ") {
        return Some(format!("doc tests ({krate})"));
    }
    let running = line.strip_prefix("Running ")?;
    let (what, path) = running.split_once(" (")?;
    if !what.starts_with("unittests ") {
        return Some(what.to_string());
    }
    // `target/debug/deps/sg_ctl-57d9…)`: the crate, without the hash.
    let file = path.trim_end_matches(')').rsplit('/').next()?;
    let krate = file.rsplit_once('-').map_or(file, |(krate, _)| krate);
    Some(format!("{what} ({krate})"))
}

/// The name of the test a `test NAME ... FAILED` line reports.
fn failed_test(line: &str) -> Option<&str> {
    line.strip_prefix("test ")?.strip_suffix(" ... FAILED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_named_as_cargo_runs_them() {
        assert_eq!(
            binary_name("     Running tests/policy.rs (target/debug/deps/policy-ef69bf73b204f3d5)")
                .as_deref(),
            Some("tests/policy.rs")
        );
        assert_eq!(
            binary_name(
                "     Running unittests src/lib.rs (target/debug/deps/sg_ctl-57d997aeeb79d6f7)"
            )
            .as_deref(),
            Some("unittests src/lib.rs (sg_ctl)")
        );
        assert_eq!(
            binary_name("   Doc-tests sg_ctl").as_deref(),
            Some("doc tests (sg_ctl)")
        );
        assert_eq!(binary_name("test a ... ok"), None);
    }

    #[test]
    fn failed_tests_are_found() {
        assert_eq!(
            failed_test("test loads_and_drops ... FAILED"),
            Some("loads_and_drops")
        );
        assert_eq!(failed_test("test loads_and_drops ... ok"), None);
        assert_eq!(failed_test("failures:"), None);
    }
}
