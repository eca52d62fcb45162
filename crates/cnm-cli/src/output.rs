//! Where results and errors go: stdout for results, stderr for errors with a hint.

use std::io::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use crate::args::Format;
use crate::client::{ApiError, UsageError};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything worked.
    Ok,
    /// Something failed and was reported already (exit code 1).
    Failed,
    /// The exit code of a command run in a sandbox.
    Code(u8),
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        match o {
            Outcome::Ok => ExitCode::SUCCESS,
            Outcome::Failed => ExitCode::from(1),
            Outcome::Code(c) => ExitCode::from(c),
        }
    }
}

/// Prints results in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Table or JSON.
    pub format: Format,
}

// Write errors on stdout (a closed pipe, as in `cnm network ls | head -1`) are the reader's
// choice, not a failure of the command, so they are deliberately not reported.
impl Printer {
    /// One line of output.
    pub fn line(&self, s: &str) {
        let _ = writeln!(std::io::stdout().lock(), "{s}");
    }

    /// Text as is.
    pub fn text(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(s.as_bytes()).and_then(|()| out.flush());
    }

    /// A JSON document, indented like docker's inspect output.
    pub fn json(&self, v: &impl Serialize) {
        self.line(&pretty(v));
    }

    /// A warning from the daemon.
    pub fn warn(&self, s: &str) {
        let _ = writeln!(std::io::stderr().lock(), "warning: {s}");
    }

    /// Reports one failure among several (as `cnm network rm a b` does) and keeps going.
    pub fn failed(&self, e: &anyhow::Error) -> Outcome {
        report(e);
        Outcome::Failed
    }
}

/// JSON indented with four spaces.
pub fn pretty(v: &impl Serialize) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut buf,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    // The API's types serialise into a Vec without fail (string keys, no I/O); should one ever
    // not, say so rather than print half a document.
    if let Err(e) = v.serialize(&mut ser) {
        return format!("(cannot encode the answer as JSON: {e})");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The error lines for `e`: `error: …` and, when there is one, `hint: …`.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = format!("error: {e:#}");
    let hint = if let Some(api) = e.downcast_ref::<ApiError>() {
        api.hint.clone()
    } else if e.downcast_ref::<UsageError>().is_some() {
        Some("`cnm <command> --help` lists the flags with examples".to_owned())
    } else {
        None
    };
    if let Some(h) = hint {
        text.push_str("\nhint: ");
        text.push_str(&h);
    }
    text
}

/// Prints an error with its hint on stderr.
pub fn report(e: &anyhow::Error) {
    let _ = writeln!(std::io::stderr().lock(), "{}", error_text(e));
}

/// The exit code for a failed command: 2 for bad usage, 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_print_message_then_hint() {
        let e = anyhow::Error::new(ApiError {
            status: 404,
            message: "network x not found".into(),
            hint: Some("`cnm network ls` lists the networks".into()),
        });
        assert_eq!(
            error_text(&e),
            "error: network x not found\nhint: `cnm network ls` lists the networks"
        );
        assert_eq!(exit_code(&e), ExitCode::from(1));
    }

    #[test]
    fn usage_errors_exit_2_with_a_help_hint() {
        let e = anyhow::Error::new(UsageError("invalid --subnet \"x\"".into()));
        assert!(error_text(&e).contains("--help"));
        assert_eq!(exit_code(&e), ExitCode::from(2));
    }

    #[test]
    fn context_chain_is_on_one_line() {
        let e = anyhow::anyhow!("No such file or directory").context("cannot open /x");
        assert_eq!(
            error_text(&e),
            "error: cannot open /x: No such file or directory"
        );
    }

    #[test]
    fn json_is_indented_with_four_spaces() {
        assert_eq!(pretty(&serde_json::json!({"a": 1})), "{\n    \"a\": 1\n}");
    }
}
