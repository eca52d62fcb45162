//! What to tell the user to do next when the daemon says no.

/// What a request was about, so a hint can name the right command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Nothing in particular.
    None,
    /// A network, by the name or id the user gave.
    Network(&'a str),
    /// Removing a network.
    NetworkRm(&'a str),
    /// A sandbox, by the name or id the user gave.
    Sandbox(&'a str),
    /// Connecting or disconnecting a sandbox and a network.
    Attach {
        /// The network.
        network: &'a str,
        /// The sandbox.
        sandbox: &'a str,
    },
}

/// The hint for an error status of the daemon (`message` is its `{"message"}`).
pub fn for_api(status: u16, message: &str, target: Target<'_>) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let hint = match (status, target) {
        (400, _) => "check the values you passed; `cnm <command> --help` lists the flags with examples"
            .to_owned(),
        (403, _) => {
            "predefined networks (bridge, host, none) cannot be changed or removed; create your own with `cnm network create NAME`".to_owned()
        }
        (404, Target::Attach { network, sandbox }) => {
            if lower.contains("sandbox") || lower.contains("container") {
                format!("no sandbox {sandbox}? `cnm sandbox ls` lists them; create it with `cnm sandbox create {sandbox}`")
            } else {
                format!("no network {network}? `cnm network ls` lists them; create it with `cnm network create {network}`")
            }
        }
        (404, Target::Network(_)) if lower.contains("driver") => {
            "`cnm info` lists the drivers this cnmd has; `-d bridge` is the default".to_owned()
        }
        (404, Target::Network(n) | Target::NetworkRm(n)) => {
            format!("`cnm network ls` lists the networks; create it with `cnm network create {n}`")
        }
        (404, Target::Sandbox(s)) => {
            format!("`cnm sandbox ls` lists the sandboxes; create it with `cnm sandbox create {s}`")
        }
        (409, Target::NetworkRm(n)) => format!(
            "sandboxes are still connected: `cnm network inspect {n}` lists them; `cnm disconnect {n} SANDBOX` or `cnm sandbox rm SANDBOX` first"
        ),
        (409, Target::Network(n)) if lower.contains("already exists") => format!(
            "pick another name, or remove the old one with `cnm network rm {n}`"
        ),
        (409, Target::Network(_)) => {
            "the request clashes with an existing network (overlapping subnet?): `cnm network ls` and `cnm network inspect NAME` show what is in use".to_owned()
        }
        (409, Target::Sandbox(s)) if lower.contains("already exists") => format!(
            "pick another name, or remove the old one with `cnm sandbox rm {s}`"
        ),
        (409, Target::Attach { network, sandbox }) => format!(
            "`cnm sandbox inspect {sandbox}` and `cnm network inspect {network}` show what is already attached or taken"
        ),
        (409, _) => "it clashes with something that exists; `cnm network ls` and `cnm sandbox ls` show what does".to_owned(),
        (501, _) => "this build of cnmd does not support that; `cnm info` lists its drivers".to_owned(),
        (503, _) => "cnmd or something it needs is not ready; retry, and see the daemon log (<run-dir>/cnmd.log, default /run/cnm/cnmd.log) if it persists".to_owned(),
        (500..=599, _) => "this is a cnmd failure; the daemon log (<run-dir>/cnmd.log, default /run/cnm/cnmd.log) has details".to_owned(),
        _ => return None,
    };
    Some(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_list_and_create_commands() {
        let h = for_api(404, "network nope not found", Target::Network("nope")).unwrap();
        assert!(
            h.contains("cnm network ls") && h.contains("cnm network create nope"),
            "{h}"
        );
        let h = for_api(404, "sandbox s1 not found", Target::Sandbox("s1")).unwrap();
        assert!(h.contains("cnm sandbox create s1"), "{h}");
    }

    #[test]
    fn unknown_driver_points_at_info() {
        let h = for_api(404, "driver \"nosuch\" not found", Target::Network("x")).unwrap();
        assert!(h.contains("cnm info"), "{h}");
    }

    #[test]
    fn attach_not_found_tells_which_side_is_missing() {
        let t = Target::Attach {
            network: "n",
            sandbox: "s",
        };
        assert!(
            for_api(404, "No such container: s", t)
                .unwrap()
                .contains("cnm sandbox create s")
        );
        assert!(
            for_api(404, "network n not found", t)
                .unwrap()
                .contains("cnm network create n")
        );
    }

    #[test]
    fn conflicts_depend_on_what_was_done() {
        for (message, target, want) in [
            (
                "network n has active endpoints",
                Target::NetworkRm("n"),
                "cnm disconnect n SANDBOX",
            ),
            (
                "network with name n already exists",
                Target::Network("n"),
                "cnm network rm n",
            ),
            (
                "subnet 10.89.0.0/25 overlaps existing pool 10.89.0.0/24",
                Target::Network("n"),
                "overlapping subnet",
            ),
        ] {
            let h = for_api(409, message, target).unwrap();
            assert!(h.contains(want), "{message}: {h}");
        }
    }

    #[test]
    fn statuses_map_to_generic_hints() {
        assert!(
            for_api(400, "bad subnet", Target::None)
                .unwrap()
                .contains("--help")
        );
        assert!(
            for_api(
                403,
                "bridge is a pre-defined network",
                Target::NetworkRm("bridge")
            )
            .unwrap()
            .contains("predefined")
        );
        assert!(
            for_api(500, "boom", Target::None)
                .unwrap()
                .contains("cnmd.log")
        );
        assert!(
            for_api(503, "store down", Target::None)
                .unwrap()
                .contains("retry")
        );
        assert_eq!(for_api(418, "teapot", Target::None), None);
    }
}
