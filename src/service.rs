//! The agent (and the brain) as a service of the operating system: a systemd unit on Linux, a
//! launchd agent on macOS, rendered from the templates in `config/systemd/` and
//! `config/launchd/`. Rendering is pure (this module); `cli/service.rs` writes the files and
//! asks systemctl or launchctl to start them.
//!
//! Secrets never go into the unit: systemd reads them from an environment file written 0600 next
//! to the config. launchd has no such file, so there they are in the plist, which is then 0600.

use std::path::Path;

const SYSTEMD_AGENT: &str = include_str!("../config/systemd/lib-agent.service");
const SYSTEMD_BRAIN: &str = include_str!("../config/systemd/lib-agent-brain.service");
const LAUNCHD_AGENT: &str = include_str!("../config/launchd/com.lib-agent.agent.plist");
const LAUNCHD_BRAIN: &str = include_str!("../config/launchd/com.lib-agent.brain.plist");

/// The unit's file name.
pub const AGENT_UNIT: &str = "lib-agent.service";
pub const BRAIN_UNIT: &str = "lib-agent-brain.service";
/// The launchd label, and its plist's file name with `.plist`.
pub const LAUNCHD_LABEL: &str = "com.lib-agent.agent";
/// The brain's launchd label (a daemon, in /Library/LaunchDaemons).
pub const LAUNCHD_BRAIN_LABEL: &str = "com.lib-agent.brain";

/// The environment a device's service needs from the shell that installs it.
pub const AGENT_ENV: &[&str] = &[
    "LIB_DEVICE_TOKEN",
    "LIB_SYNC_SECRET",
    "LIB_WEBHOOK_SECRET",
    "LIB_BRAIN_URL",
    "LIB_SUPABASE_FN_URL",
    "LIB_BRAIN_CA_FILE",
    "LIB_WEBHOOK_PORT",
    "LIB_SYNC_BATCH_SIZE",
    "LIB_LOG",
];

/// ... and the brain's.
pub const BRAIN_ENV: &[&str] = &[
    "LIB_SYNC_SECRET",
    "LIB_SYNC_SECRET_PREVIOUS",
    "LIB_WEBHOOK_SECRET",
    "LIB_BRAIN_DATABASE_URL",
    "LIB_METRICS_TOKEN",
    "LIB_LOG",
];

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what} {value:?} cannot go into a service file: {problem}")]
    Unusable {
        what: String,
        value: String,
        problem: &'static str,
    },
}

/// One argument of `ExecStart=`, quoted for systemd: in double quotes when it needs them, with
/// `\` and `"` escaped, and `%` and `$` doubled (systemd expands specifiers and variables there).
pub fn systemd_arg(arg: &str) -> Result<String, ServiceError> {
    if arg.chars().any(char::is_control) {
        return Err(ServiceError::Unusable {
            what: "argument".into(),
            value: arg.into(),
            problem: "it holds a control character",
        });
    }
    let escaped = arg
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=".contains(c));
    Ok(if plain {
        escaped
    } else {
        format!("\"{escaped}\"")
    })
}

/// The line of a systemd environment file setting `name` to `value`.
pub fn env_line(name: &str, value: &str) -> Result<String, ServiceError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(ServiceError::Unusable {
            what: format!("environment variable {name}"),
            value: "(not shown)".into(),
            problem: "it holds a line break",
        });
    }
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "\\$");
    Ok(format!("{name}=\"{escaped}\"\n"))
}

/// The environment file: the variables of `names` that `env` sets, in that order.
pub fn env_file(
    names: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), ServiceError> {
    let mut text =
        String::from("# Written by `agent service install` (mode 0600): the service's secrets.\n");
    let mut set = Vec::new();
    for name in names {
        if let Some(value) = env(name) {
            text.push_str(&env_line(name, &value)?);
            set.push((*name).to_owned());
        }
    }
    Ok((text, set))
}

/// The systemd unit running `args` (the binary's absolute path first), its secrets from
/// `env_file`.
pub fn systemd_unit(brain: bool, args: &[String], env_file: &Path) -> Result<String, ServiceError> {
    let exec: Vec<String> = args
        .iter()
        .map(|a| systemd_arg(a))
        .collect::<Result<_, _>>()?;
    let env_file = systemd_arg(&env_file.to_string_lossy())?;
    let template = if brain { SYSTEMD_BRAIN } else { SYSTEMD_AGENT };
    Ok(template
        .replace("{exec_start}", &exec.join(" "))
        .replace("{env_file}", &env_file))
}

/// `text` escaped for XML character data.
pub fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The launchd plist (the agent's, or with `brain` the brain daemon's) running `args`, with `env`
/// in its environment, logging to `log_dir`.
pub fn launchd_plist(
    brain: bool,
    args: &[String],
    env: &[(String, String)],
    log_dir: &Path,
) -> String {
    let program_arguments: Vec<String> = args
        .iter()
        .map(|a| format!("        <string>{}</string>", xml_escape(a)))
        .collect();
    let environment: Vec<String> = env
        .iter()
        .map(|(k, v)| {
            format!(
                "        <key>{}</key>\n        <string>{}</string>",
                xml_escape(k),
                xml_escape(v)
            )
        })
        .collect();
    let template = if brain { LAUNCHD_BRAIN } else { LAUNCHD_AGENT };
    template
        .replace("{program_arguments}", &program_arguments.join("\n"))
        .replace("{environment}", &environment.join("\n"))
        .replace("{log_dir}", &xml_escape(&log_dir.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_arguments_are_quoted_for_systemd() {
        assert_eq!(systemd_arg("/usr/bin/agent").unwrap(), "/usr/bin/agent");
        assert_eq!(
            systemd_arg("/my files/a.toml").unwrap(),
            "\"/my files/a.toml\""
        );
        assert_eq!(systemd_arg("50%$HOME").unwrap(), "\"50%%$$HOME\"");
        assert_eq!(systemd_arg("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
        assert!(systemd_arg("a\nb").is_err());
    }

    #[test]
    fn the_environment_file_holds_only_what_is_set_and_refuses_line_breaks() {
        let env = |k: &str| match k {
            "LIB_DEVICE_TOKEN" => Some("tok\"en$x".to_owned()),
            "LIB_BRAIN_URL" => Some("https://brain".to_owned()),
            _ => None,
        };
        let (text, set) = env_file(AGENT_ENV, &env).unwrap();
        assert_eq!(set, ["LIB_DEVICE_TOKEN", "LIB_BRAIN_URL"]);
        assert!(
            text.contains("LIB_DEVICE_TOKEN=\"tok\\\"en\\$x\"\n"),
            "{text}"
        );
        let bad = |_: &str| Some("a\nb".to_owned());
        let err = env_file(&["LIB_SYNC_SECRET"], &bad)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("a\nb"), "the value is not shown: {err}");
    }

    #[test]
    fn the_plist_escapes_what_it_holds() {
        let plist = launchd_plist(
            false,
            &["/bin/agent".into(), "a&b".into()],
            &[("LIB_SYNC_SECRET".into(), "<s>".into())],
            Path::new("/logs"),
        );
        assert!(plist.contains("<string>a&amp;b</string>"), "{plist}");
        assert!(plist.contains("<string>&lt;s&gt;</string>"), "{plist}");
        assert!(
            plist.contains("<string>/logs/agent.log</string>"),
            "{plist}"
        );
    }
}
