//! Counting tests from libtest's human output.
//!
//! Every test binary (and every crate's doc tests) ends with one line like
//! `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`;
//! summing those lines is robust against test output mixed into the stream. Ignored doc tests
//! (```` ```ignore ```` blocks) are counted apart, from their per-test lines
//! (`test src/lib.rs - item (line 12) ... ignored`), because they are not privileged tests.

/// Test counts summed over every `test result:` line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// How many `test result:` lines were seen (one per test binary / doc-test crate).
    pub results: u64,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Of `ignored`, how many were doc tests.
    pub ignored_doc: u64,
}

/// Sums the counts in `output` (libtest's stdout, possibly interleaved with anything else).
pub fn count(output: &str) -> Counts {
    let mut counts = Counts::default();
    for line in output.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("test result: ") {
            counts.results += 1;
            // "ok. 3 passed; 0 failed; ..." or "FAILED. 2 passed; 1 failed; ..."
            let fields = rest.split_once(". ").map_or(rest, |(_, fields)| fields);
            for field in fields.split(';') {
                let mut words = field.split_whitespace();
                let (Some(number), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(number) = number.parse::<u64>() else {
                    continue;
                };
                match what {
                    "passed" => counts.passed += number,
                    "failed" => counts.failed += number,
                    "ignored" => counts.ignored += number,
                    _ => {}
                }
            }
        } else if is_ignored_doc_test(line) {
            counts.ignored_doc += 1;
        }
    }
    counts
}

/// `test src/lib.rs - Pool::new (line 12) ... ignored` (and `... ignored, reason`).
fn is_ignored_doc_test(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("test ") else {
        return false;
    };
    let Some((name, status)) = rest.rsplit_once(" ... ") else {
        return false;
    };
    status.starts_with("ignored")
        && name.contains(" - ")
        && name.ends_with(')')
        && name.contains("(line ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
running 3 tests
test pool::tests::allocates ... ok
test pool::tests::releases ... ok
test kernel::creates_bridge ... ignored, privileged: run cargo xtask test

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

running 2 tests
test probe::tcp_reaches ... FAILED
test probe::udp_reaches ... ok

failures:
    probe::tcp_reaches

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 3 filtered out; finished in 1.20s

running 2 tests
test crates/cnm-ipam/src/lib.rs - (line 10) ... ok
test crates/cnm-ipam/src/lib.rs - Pool::new (line 42) ... ignored

test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.30s

all doctests ran in 0.31s; merged doctests compilation took 0.29s
";

    #[test]
    fn sums_every_result_line_and_separates_ignored_doc_tests() {
        assert_eq!(
            count(OUTPUT),
            Counts {
                results: 3,
                passed: 4,
                failed: 1,
                ignored: 2,
                ignored_doc: 1
            }
        );
    }

    #[test]
    fn output_without_results_counts_nothing() {
        assert_eq!(
            count("error[E0425]: cannot find value `x`\n"),
            Counts::default()
        );
    }

    #[test]
    fn a_privileged_test_named_like_a_path_is_not_a_doc_test() {
        assert!(!is_ignored_doc_test(
            "test netns::creates ... ignored, privileged: run cargo xtask test"
        ));
        assert!(is_ignored_doc_test(
            "test src/lib.rs - probe (line 3) ... ignored"
        ));
    }
}
