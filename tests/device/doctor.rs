//! `agent doctor`: each check, what it says, and the exit status.

use serde_json::Value;

use crate::support::brain::SECRET;
use crate::support::brain_blocking::BlockingBrain;
use crate::support::lab::Lab;
use crate::support::wait::PATIENCE;

/// The check named `name` (the first, when several have it).
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

fn doctor(lab: &Lab, env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let run = lab.agent_env(&["--json", "doctor"], env);
    (run.code, run.json())
}

#[test]
fn a_healthy_local_setup_passes_and_says_the_agent_is_not_running() {
    let lab = Lab::with_config("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    lab.write("notes/sub/a.md", "alpha");
    lab.scan(&[]);
    let (code, report) = doctor(&lab, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(check(&report, "config")["status"], "ok");
    assert_eq!(check(&report, "database")["status"], "ok");
    let lib = check(&report, "library notes");
    assert_eq!(lib["status"], "ok", "{lib}");
    assert!(
        lib["detail"].as_str().unwrap().contains("2 folders"),
        "{lib}"
    );
    assert_eq!(check(&report, "agent")["status"], "warn");
    assert!(check(&report, "agent")["fix"]
        .as_str()
        .unwrap()
        .contains("service install"));
    assert_eq!(
        check(&report, "brain")["status"],
        "ok",
        "local-only is fine"
    );
    assert_eq!(check(&report, "outbox")["status"], "ok");
}

#[test]
fn a_missing_library_root_fails_and_says_what_to_do() {
    let lab = Lab::with_config("[[library]]\nname = \"usb\"\npath = \"{root}/usb\"\n");
    let run = lab.agent(&["doctor"]).failure();
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.contains("FAIL  library usb"), "{}", run.stdout);
    assert!(
        run.stdout.contains("agent library remove usb"),
        "{}",
        run.stdout
    );
    run.assert_one_line_error(&["1 check failed"]);
    let (code, report) = doctor(&lab, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        report["ok"], false,
        "one document on stdout, saying so: {report}"
    );
    assert_eq!(check(&report, "library usb")["status"], "fail");
}

#[test]
fn a_config_that_does_not_load_fails_and_the_other_checks_still_run() {
    let lab = Lab::with_config("[[library]]\nname = \"n\"\n");
    let (code, report) = doctor(&lab, &[]);
    assert_eq!(code, Some(1));
    let config = check(&report, "config");
    assert_eq!(config["status"], "fail");
    assert!(
        config["detail"].as_str().unwrap().contains("path"),
        "{config}"
    );
    check(&report, "database");
    check(&report, "agent");
}

#[test]
fn the_brain_is_checked_with_this_devices_credential() {
    let lab = Lab::new();
    let brain = BlockingBrain::start(lab.root());
    lab.write_config(&format!("[sync]\nbrain_url = \"{}\"\n", brain.url()));
    lab.agent(&["init"]).success();

    let (code, report) = doctor(&lab, &[("LIB_SYNC_SECRET", SECRET)]);
    assert_eq!(check(&report, "brain")["status"], "ok", "{report}");
    assert_eq!(check(&report, "clock")["status"], "ok", "{report}");
    assert_ne!(code, Some(1), "{report}");

    let (code, report) = doctor(&lab, &[("LIB_SYNC_SECRET", "not-the-secret")]);
    assert_eq!(code, Some(1));
    let refused = check(&report, "brain");
    assert_eq!(refused["status"], "fail");
    assert!(
        refused["detail"].as_str().unwrap().contains("401"),
        "{refused}"
    );
    assert!(
        refused["fix"]
            .as_str()
            .unwrap()
            .contains("LIB_DEVICE_TOKEN"),
        "{refused}"
    );
}

#[test]
fn a_brain_that_does_not_answer_fails() {
    let lab = Lab::with_config(&format!(
        "[sync]\nbrain_url = \"http://{}\"\n",
        crate::support::net::reserved_addr()
    ));
    lab.agent(&["init"]).success();
    let (code, report) = doctor(&lab, &[("LIB_SYNC_SECRET", SECRET)]);
    assert_eq!(code, Some(1));
    let brain = check(&report, "brain");
    assert_eq!(brain["status"], "fail", "{brain}");
    assert!(
        brain["fix"].as_str().unwrap().contains("brain_url"),
        "{brain}"
    );
}

/// DESIGN.md "Convergence you can check", through the binary: two devices synced through a brain
/// are converged (doctor, status); a hand edit of one's shared view makes doctor fail twice (the
/// rows no longer match the kept digest, and the brain reports it DIVERGED), and `agent sync
/// --reseed` repairs it, forged row and all.
#[test]
fn a_diverged_replica_fails_the_doctor_and_sync_reseed_repairs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let config = format!(
        "[[library]]\nname = \"notes\"\npath = \"{{root}}/notes\"\n[sync]\nbrain_url = \"{}\"\n",
        brain.url()
    );
    let env = [("LIB_SYNC_SECRET", SECRET)];
    let (one, two) = (Lab::with_config(&config), Lab::with_config(&config));
    one.write("notes/a.md", "alpha\n");
    one.write("notes/b.md", "bravo\n");
    one.scan(&[]);
    one.agent_env(&["sync"], &env).success();
    two.write("notes/c.md", "charlie\n");
    two.scan(&[]);
    two.agent_env(&["sync"], &env).success();
    one.agent_env(&["sync"], &env).success();

    for lab in [&one, &two] {
        let (code, report) = doctor(lab, &env);
        assert_eq!(check(&report, "replica")["status"], "ok", "{report}");
        let converged = check(&report, "converged");
        assert_eq!(converged["status"], "ok", "{report}");
        assert!(
            converged["detail"]
                .as_str()
                .unwrap()
                .contains("the same shared view"),
            "{converged}"
        );
        assert_ne!(code, Some(1), "{report}");
        let status = lab.agent_env(&["--json", "status"], &env).success().json();
        assert_eq!(
            status["sync"]["convergence"],
            serde_json::json!({"state": "converged", "lag": 0}),
            "{status}"
        );
        assert!(status["sync"]["devices"].is_array(), "{status}");
    }

    // A forged winner that sorts above every real version: merging the snapshot over it would
    // keep it.
    two.db()
        .conn
        .execute(
            "UPDATE lib_files SET sha256 = ?1, event_ulid = '7ZZZZZZZZZZZZZZZZZZZZZZZZZ',
               vector_clock = '{\"zz-forged\":9007199254740992}', seen_vc = NULL, siblings = NULL
             WHERE path = 'notes/a.md'",
            ["f".repeat(64)],
        )
        .expect("a hand edit");
    let (code, report) = doctor(&two, &env);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(check(&report, "replica")["status"], "fail", "{report}");
    let diverged = check(&report, "converged");
    assert_eq!(diverged["status"], "fail", "{report}");
    assert!(
        diverged["detail"].as_str().unwrap().contains("DIVERGED"),
        "{diverged}"
    );
    assert!(
        diverged["fix"]
            .as_str()
            .unwrap()
            .contains("agent sync --reseed"),
        "{diverged}"
    );

    let reseed = two.agent_env(&["sync", "--reseed"], &env).success();
    assert!(reseed.stdout.contains("re-seeded"), "{}", reseed.stdout);
    assert!(
        reseed
            .stdout
            .contains("this device against the brain: converged"),
        "{}",
        reseed.stdout
    );
    assert_eq!(
        two.db().file("notes/a.md").sha256.as_deref(),
        one.db().file("notes/a.md").sha256.as_deref()
    );
    let (code, report) = doctor(&two, &env);
    assert_eq!(check(&report, "replica")["status"], "ok", "{report}");
    assert_eq!(check(&report, "converged")["status"], "ok", "{report}");
    assert_ne!(code, Some(1), "{report}");
}

/// The re-seed replaces the shared view in one long transaction: it refuses to run beside an
/// `agent run` on the same database (which would wait on it past its busy timeout).
#[test]
fn sync_reseed_refuses_to_run_beside_a_running_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let lab = Lab::with_config(&format!("[sync]\nbrain_url = \"{}\"\n", brain.url()));
    lab.agent(&["init"]).success();
    let held = lib_agent::daemon::RunLock::acquire(&lab.path("agent.db")).expect("the run lock");
    let run = lab
        .agent_env(&["sync", "--reseed"], &[("LIB_SYNC_SECRET", SECRET)])
        .failure();
    run.assert_one_line_error(&["agent run", "stop it first", "re-seed"]);
    drop(held);
    lab.agent_env(&["sync", "--reseed"], &[("LIB_SYNC_SECRET", SECRET)])
        .success();
}

/// With device tokens, `agent status` lists every enrolled device with its state (this one
/// marked), and sync keeps the brain's names of devices for `agent conflicts`.
#[test]
fn status_lists_the_enrolled_devices_and_sync_keeps_their_names() {
    use lib_agent::brain::auth::{hash_token, new_token};
    use lib_agent::brain::store::BrainStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let enrol = |name: &str| {
        let token = new_token().expect("token");
        brain
            .runtime()
            .block_on(brain.store.add_device(name, &hash_token(&token)))
            .expect("enrol");
        token
    };
    let (laptop, _desktop) = (enrol("laptop"), enrol("desktop"));
    let lab = Lab::with_config(&format!(
        "[[library]]\nname = \"notes\"\npath = \"{{root}}/notes\"\n[sync]\nbrain_url = \"{}\"\n",
        brain.url()
    ));
    lab.write("notes/a.md", "alpha\n");
    lab.scan(&[]);
    let env = [("LIB_DEVICE_TOKEN", laptop.as_str())];
    lab.agent_env(&["sync"], &env).success();
    let names: serde_json::Value =
        serde_json::from_str(&lab.db().kv("device_names").expect("names kept")).expect("json");
    assert_eq!(names, serde_json::json!({ lab.device_id(): "laptop" }));

    // The brain writes what a device's pulls said at most every few seconds.
    let mut devices = Vec::new();
    crate::support::wait::wait_until("the laptop's pull recorded", PATIENCE, || {
        let status = lab.agent_env(&["--json", "status"], &env).success().json();
        devices = status["sync"]["devices"]
            .as_array()
            .expect("devices")
            .clone();
        devices
            .iter()
            .any(|d| d["name"] == "laptop" && !d["cursor"].is_null())
    });
    let state = |name: &str| {
        devices
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["state"].clone())
            .unwrap_or_else(|| panic!("{name} in {devices:?}"))
    };
    assert_eq!(state("laptop"), "converged");
    assert_eq!(state("desktop"), "never seen");
    let text = lab.agent_env(&["status"], &env).success().stdout;
    assert!(text.contains("laptop (this device): converged"), "{text}");
    assert!(text.contains("desktop: never seen"), "{text}");
}
