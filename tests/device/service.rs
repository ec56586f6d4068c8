//! `agent service install | uninstall | status`, into temporary folders (never the real unit
//! folders): the files it writes, checked by `systemd-analyze verify` and, for launchd, parsed
//! as a property list.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::lab::Lab;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// `systemd-analyze verify` on a unit, where the machine has it.
fn verify(unit: &std::path::Path) {
    let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
    else {
        eprintln!(
            "SKIPPED systemd-analyze verify of {}: not on this machine",
            unit.display()
        );
        return;
    };
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {}: {}",
        unit.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn service_install_writes_a_user_unit_running_this_binary_and_its_secrets_0600() {
    let lab = Lab::new();
    let units = lab.path("units");
    let env_file = lab.path("secret/agent.env");
    let run = lab
        .agent_env(
            &[
                "service",
                "install",
                "--unit-dir",
                units.to_str().unwrap(),
                "--env-file",
                env_file.to_str().unwrap(),
            ],
            &[
                ("LIB_DEVICE_TOKEN", "tok-123"),
                ("LIB_BRAIN_URL", "https://brain.example"),
            ],
        )
        .success();
    let unit = units.join("lib-agent.service");
    let text = std::fs::read_to_string(&unit).expect("the unit is written");
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_agent"))
        .canonicalize()
        .expect("binary");
    let exec = format!(
        "ExecStart={} --config {} --db {} run\n",
        exe.display(),
        lab.config.display(),
        lab.db.display()
    );
    assert!(text.contains(&exec), "{text}");
    assert!(
        text.contains(&format!("EnvironmentFile=-{}\n", env_file.display())),
        "{text}"
    );
    assert!(text.contains("Restart=on-failure"), "{text}");
    assert!(!text.contains("tok-123"), "no secret in the unit");
    assert_eq!(mode(&env_file), 0o600);
    let env = std::fs::read_to_string(&env_file).expect("env file");
    assert!(env.contains("LIB_DEVICE_TOKEN=\"tok-123\"\n"), "{env}");
    assert!(
        env.contains("LIB_BRAIN_URL=\"https://brain.example\"\n"),
        "{env}"
    );
    assert!(
        !run.stdout.contains("tok-123"),
        "the secret is not shown: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "systemctl --user daemon-reload && systemctl --user enable --now lib-agent.service"
        ),
        "a unit outside the manager's folders: the commands are printed, not run: {}",
        run.stdout
    );
    verify(&unit);

    let status = lab.json(&["service", "status", "--unit-dir", units.to_str().unwrap()]);
    assert_eq!(status["installed"], true);
    let gone = lab.json(&[
        "service",
        "uninstall",
        "--unit-dir",
        units.to_str().unwrap(),
        "--env-file",
        env_file.to_str().unwrap(),
    ]);
    assert_eq!(gone["removed"].as_array().map(Vec::len), Some(2), "{gone}");
    assert!(!unit.exists() && !env_file.exists());
    let status = lab.json(&["service", "status", "--unit-dir", units.to_str().unwrap()]);
    assert_eq!(status["installed"], false);
}

#[test]
fn service_install_dry_run_writes_nothing_and_shows_no_secret() {
    let lab = Lab::new();
    let units = lab.path("units");
    let run = lab
        .agent_env(
            &[
                "service",
                "install",
                "--dry-run",
                "--unit-dir",
                units.to_str().unwrap(),
                "--env-file",
                lab.path("a.env").to_str().unwrap(),
            ],
            &[("LIB_SYNC_SECRET", "s3cret")],
        )
        .success();
    assert!(run.stdout.contains("ExecStart="), "{}", run.stdout);
    assert!(
        run.stdout.contains("with: LIB_SYNC_SECRET"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("s3cret"), "{}", run.stdout);
    assert!(
        !units.exists() && !lab.path("a.env").exists(),
        "nothing written"
    );
}

#[test]
fn service_install_brain_writes_a_system_unit_for_brain_serve() {
    let lab = Lab::new();
    let units = lab.path("units");
    let env_file = lab.path("brain.env");
    let run = lab
        .agent_env(
            &[
                "service",
                "install",
                "--brain",
                "--unit-dir",
                units.to_str().unwrap(),
                "--env-file",
                env_file.to_str().unwrap(),
            ],
            &[("LIB_SYNC_SECRET", "s3cret")],
        )
        .success();
    let unit = units.join("lib-agent-brain.service");
    let text = std::fs::read_to_string(&unit).expect("the unit is written");
    assert!(
        text.contains(&format!("--db {} brain serve\n", lab.db.display())),
        "{text}"
    );
    assert!(text.contains("WantedBy=multi-user.target"), "{text}");
    assert!(
        run.stdout
            .contains("systemctl daemon-reload && systemctl enable --now lib-agent-brain.service"),
        "{}",
        run.stdout
    );
    assert_eq!(mode(&env_file), 0o600);
    verify(&unit);
}

#[test]
fn service_install_brain_runs_brain_serve_with_the_options_after_the_double_dash_checked_first() {
    let lab = Lab::new();
    let units = lab.path("units");
    let env_file = lab.path("brain.env");
    let base = [
        "service",
        "install",
        "--brain",
        "--unit-dir",
        units.to_str().unwrap(),
        "--env-file",
        env_file.to_str().unwrap(),
        "--",
    ];
    let with = |options: &[&str]| -> Vec<String> {
        base.iter()
            .chain(options)
            .map(|s| (*s).to_owned())
            .collect()
    };
    lab.agent_env(
        &with(&[
            "--listen",
            "127.0.0.1:8787",
            "--trusted-proxy",
            "127.0.0.1",
            "--prune-older-than",
            "365d",
        ]),
        &[("LIB_SYNC_SECRET", "s3cret")],
    )
    .success();
    let unit = units.join("lib-agent-brain.service");
    let text = std::fs::read_to_string(&unit).expect("the unit is written");
    assert!(
        text.contains("brain serve --listen 127.0.0.1:8787 --trusted-proxy 127.0.0.1 --prune-older-than 365d\n"),
        "{text}"
    );
    verify(&unit);
    std::fs::remove_dir_all(&units).expect("clean");

    for (options, says) in [
        (
            &["--lisen", "127.0.0.1:8787"][..],
            "not `agent brain serve`'s",
        ),
        (&["--prune-older-than", "10s"], "shorter than a minute"),
        (
            &["--database-url", "postgres://u:pw@db/x"],
            "LIB_BRAIN_DATABASE_URL",
        ),
    ] {
        let run = lab
            .agent_env(&with(options), &[("LIB_SYNC_SECRET", "s3cret")])
            .failure();
        assert!(run.stderr.contains(says), "{options:?}: {}", run.stderr);
        assert!(!units.exists(), "{options:?}: nothing written");
    }
    // Serve options are the brain's: without --brain they are refused.
    let run = lab.agent(&[
        "service",
        "install",
        "--unit-dir",
        units.to_str().unwrap(),
        "--",
        "--listen",
        "x",
    ]);
    assert!(
        !run.ok() && run.stderr.contains("--brain"),
        "{}",
        run.stderr
    );
}

#[test]
fn service_install_refuses_a_config_file_that_does_not_exist() {
    let lab = Lab::new();
    std::fs::remove_file(&lab.config).expect("remove the config");
    lab.agent(&[
        "service",
        "install",
        "--unit-dir",
        lab.path("units").to_str().unwrap(),
    ])
    .failure()
    .assert_one_line_error(&["does not exist", "library add"]);
    assert!(!lab.path("units").exists());
}

#[test]
fn the_brains_launchd_daemon_is_a_property_list_running_brain_serve_with_its_options() {
    let lab = Lab::new();
    let units = lab.path("LaunchDaemons");
    lab.agent_env(
        &[
            "service",
            "install",
            "--brain",
            "--launchd",
            "--unit-dir",
            units.to_str().unwrap(),
            "--",
            "--listen",
            "127.0.0.1:8787",
        ],
        &[("LIB_SYNC_SECRET", "s3cret")],
    )
    .success();
    let plist = units.join("com.lib-agent.brain.plist");
    assert_eq!(mode(&plist), 0o600, "it holds the secret");
    let script =
        "import json,plistlib,sys; print(json.dumps(plistlib.load(open(sys.argv[1],'rb'))))";
    let Ok(out) = Command::new("python3")
        .args(["-c", script])
        .arg(&plist)
        .output()
    else {
        eprintln!("SKIPPED parsing the plist: no python3 on this machine");
        return;
    };
    assert!(
        out.status.success(),
        "not a property list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["Label"], "com.lib-agent.brain");
    assert_eq!(
        (doc["RunAtLoad"].clone(), doc["KeepAlive"].clone()),
        (true.into(), true.into())
    );
    let args: Vec<&str> = doc["ProgramArguments"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.ends_with(&["brain", "serve", "--listen", "127.0.0.1:8787"]),
        "{args:?}"
    );
    assert_eq!(doc["EnvironmentVariables"]["LIB_SYNC_SECRET"], "s3cret");
    assert!(doc["StandardErrorPath"]
        .as_str()
        .is_some_and(|p| p.ends_with("lib-agent/brain.log")));
}

#[test]
fn the_launchd_agent_is_a_property_list_with_its_program_and_environment() {
    let lab = Lab::new();
    let units = lab.path("LaunchAgents");
    lab.agent_env(
        &[
            "service",
            "install",
            "--launchd",
            "--unit-dir",
            units.to_str().unwrap(),
        ],
        &[("LIB_DEVICE_TOKEN", "tok&<1>")],
    )
    .success();
    let plist = units.join("com.lib-agent.agent.plist");
    assert_eq!(mode(&plist), 0o600, "it holds the token");
    let script =
        "import json,plistlib,sys; print(json.dumps(plistlib.load(open(sys.argv[1],'rb'))))";
    let Ok(out) = Command::new("python3")
        .args(["-c", script])
        .arg(&plist)
        .output()
    else {
        eprintln!("SKIPPED parsing the plist: no python3 on this machine");
        return;
    };
    assert!(
        out.status.success(),
        "not a property list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["Label"], "com.lib-agent.agent");
    assert_eq!(doc["RunAtLoad"], true);
    assert!(doc["KeepAlive"].is_object(), "{doc}");
    let args: Vec<&str> = doc["ProgramArguments"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args.last(), Some(&"run"), "{args:?}");
    assert!(
        args.contains(&"--config") && args.contains(&"--db"),
        "{args:?}"
    );
    assert_eq!(doc["EnvironmentVariables"]["LIB_DEVICE_TOKEN"], "tok&<1>");
    assert!(doc["StandardErrorPath"]
        .as_str()
        .is_some_and(|p| p.ends_with("agent.log")));
}
