//! The guards against deletions that are not real (issue 14 points 7 and 8): a library root
//! left on another file system (an unmounted disk's mount point, holding a stray file) is
//! refused like a missing root, and `agent run` holds a mass delete instead of recording it.
//! Real binary, real folders; the other file system is /dev/shm when it is one.

use serde_json::Value;

use crate::library::Running;
use crate::support::lab::Lab;

use lib_agent::index::root_fs;

const NOTES: &str = "[[library]]\nname = \"notes\"\npath = '{root}/notes'\n";

fn delete_events(lab: &Lab) -> usize {
    lab.db()
        .outbox()
        .iter()
        .filter(|e| e.event_type == "delete_file")
        .count()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

fn library_status(lab: &Lab, name: &str) -> Value {
    let status = lab.json(&["status"]);
    status["libraries"]
        .as_array()
        .expect("libraries")
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no library {name} in {status}"))
}

/// A folder on another file system than the lab's, when there is one (tmpfs on /dev/shm).
fn other_file_system(lab: &Lab) -> Option<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    let here = root_fs::identify(lab.root())?;
    let there = root_fs::identify(shm)?;
    (here.fs != there.fs)
        .then(|| {
            tempfile::Builder::new()
                .prefix("lib-agent-test-")
                .tempdir_in(shm)
                .ok()
        })
        .flatten()
}

#[test]
fn a_root_left_on_another_file_system_with_a_stray_file_deletes_nothing() {
    // `notes` is a symlink to the library's folder; swapping it for one to a folder on another
    // file system is what unmounting does to a mount point, seen from the library's root.
    let lab = Lab::with_config(NOTES);
    let Some(elsewhere) = other_file_system(&lab) else {
        eprintln!("skipped: no second file system (/dev/shm) beside the lab's");
        return;
    };
    for i in 0..5 {
        lab.write(&format!("real/f{i}.txt"), format!("{i}\n"));
    }
    std::os::unix::fs::symlink(lab.path("real"), lab.path("notes")).expect("symlink");
    assert_eq!(lab.scan(&[])["upserted"], 5);

    std::fs::write(elsewhere.path().join("stray.txt"), "left behind\n").expect("stray");
    std::fs::remove_file(lab.path("notes")).expect("unlink");
    std::os::unix::fs::symlink(elsewhere.path(), lab.path("notes")).expect("symlink");

    let run = lab.agent(&["scan"]).failure();
    run.assert_one_line_error(&[
        "another file system",
        "nothing deleted",
        "agent scan --allow-other-file-system --library notes",
    ]);
    assert_eq!(delete_events(&lab), 0, "nothing recorded");
    assert_eq!(lab.db().live_paths().len(), 5, "not even the stray file");

    let run = lab.agent(&["--json", "doctor"]);
    let same = check(&run.json(), "same_file_system notes").clone();
    assert_eq!(same["status"], "fail", "{same}");
    assert!(
        same["fix"]
            .as_str()
            .unwrap()
            .contains("--allow-other-file-system --library notes"),
        "{same}"
    );

    // The user says it really moved: scanned there, and that file system is the one now.
    let out = lab.scan(&["--allow-other-file-system", "--library", "notes"]);
    assert_eq!(
        (out["upserted"].as_u64(), out["deleted"].as_u64()),
        (Some(1), Some(5))
    );
    assert_eq!(lab.scan(&[])["ok"], true);
    let run = lab.agent(&["--json", "doctor"]);
    assert_eq!(check(&run.json(), "same_file_system notes")["status"], "ok");
}

#[test]
fn agent_run_starting_on_a_root_left_on_another_file_system_deletes_nothing_and_polls_it() {
    let lab = Lab::with_config(NOTES);
    let Some(elsewhere) = other_file_system(&lab) else {
        eprintln!("skipped: no second file system (/dev/shm) beside the lab's");
        return;
    };
    for i in 0..5 {
        lab.write(&format!("real/f{i}.txt"), format!("{i}\n"));
    }
    std::os::unix::fs::symlink(lab.path("real"), lab.path("notes")).expect("symlink");
    lab.scan(&[]);
    std::fs::write(elsewhere.path().join("stray.txt"), "left behind\n").expect("stray");
    std::fs::remove_file(lab.path("notes")).expect("unlink");
    std::os::unix::fs::symlink(elsewhere.path(), lab.path("notes")).expect("symlink");

    let running = Running::start(&lab);
    running.wait("the agent says why it scans nothing", || {
        std::fs::read_to_string(&running.log).is_ok_and(|l| l.contains("another file system"))
    });
    let status = lab.json(&["status"]);
    let mode = &status["agent"]["state"]["libraries"]["notes"];
    assert_eq!(mode["mode"], "polling", "{status}");
    drop(running);
    assert_eq!(delete_events(&lab), 0);
    assert_eq!(lab.db().live_paths().len(), 5);
}

#[test]
fn a_root_on_another_file_system_than_recorded_is_refused_like_a_missing_root() {
    // Where no second file system is at hand: the recorded identity is made to differ.
    let lab = Lab::with_config(NOTES);
    for i in 0..5 {
        lab.write(&format!("notes/f{i}.txt"), format!("{i}\n"));
    }
    lab.scan(&[]);
    let Some(recorded) = lab.db().kv("library_root/notes") else {
        eprintln!("skipped: the file system of roots is not identified on this platform");
        return;
    };
    let mut was: root_fs::RootFs = serde_json::from_str(&recorded).expect("identity as JSON");
    assert_eq!(
        was.root,
        lab.path("notes"),
        "the root as configured is recorded"
    );
    was.fs = "ext4:/dev/unplugged".into();
    let conn = rusqlite::Connection::open(&lab.db).expect("open db");
    conn.execute(
        "UPDATE lib_kv SET v = ?1 WHERE k = 'library_root/notes'",
        [serde_json::to_string(&was).expect("json")],
    )
    .expect("write lib_kv");
    drop(conn);
    std::fs::remove_file(lab.path("notes/f0.txt")).expect("remove");

    let run = lab.agent(&["scan"]).failure();
    run.assert_one_line_error(&[
        "root",
        "is on another file system than when last scanned (was ext4 ext4:/dev/unplugged",
        "agent scan --allow-other-file-system --library notes",
    ]);
    assert_eq!(delete_events(&lab), 0);
    let json = lab.agent(&["--json", "scan"]).failure().json();
    assert_eq!(json["ok"], false, "{json}");

    let out = lab.scan(&["--allow-other-file-system"]);
    assert_eq!(out["deleted"], 1, "{out}");
    assert_eq!(
        lab.scan(&[])["ok"],
        true,
        "the file system is recorded again"
    );
}

#[test]
fn agent_run_holds_a_mass_delete_across_a_restart_until_scan_allow_mass_delete_releases_it() {
    let lab = Lab::with_config(NOTES);
    for i in 0..30 {
        lab.write(&format!("notes/top{i:02}.txt"), format!("top {i}\n"));
    }
    for i in 0..120 {
        lab.write(&format!("notes/sub/f{i:03}.txt"), format!("sub {i}\n"));
    }
    let running = Running::start(&lab);
    running.wait("the start-up scan indexed 150 files", || {
        lab.db().live_paths().len() == 150
    });

    std::fs::remove_dir_all(lab.path("notes/sub")).expect("rm -r");
    // The watcher may see the deletions in more than one batch: those before the rule tripped
    // are recorded, the rest are held; the rule trips within the 120.
    let held = || {
        lab.db()
            .kv("held_deletions/notes")
            .map(|v| serde_json::from_str::<Value>(&v).expect("held as JSON"))
    };
    let held_keys = || -> Vec<String> {
        held().map_or_else(Vec::new, |h| {
            serde_json::from_value(h["keys"].clone()).expect("keys")
        })
    };
    running.wait("every deletion recorded or held", || {
        !held_keys().is_empty() && held_keys().len() + delete_events(&lab) == 120
    });
    let recorded_before = delete_events(&lab);
    assert!(recorded_before <= 100, "{recorded_before} recorded");
    assert!(
        std::fs::read_to_string(&running.log)
            .unwrap()
            .contains("agent scan --allow-mass-delete --library notes"),
        "the log says what to do"
    );

    // status and doctor show the hold.
    let keys = held_keys();
    assert_eq!(
        library_status(&lab, "notes")["held_deletions"],
        keys.len() as u64
    );
    let text = lab.agent(&["status"]).success();
    assert!(
        text.stdout
            .contains(&format!("{} deletions held", keys.len()))
            && text
                .stdout
                .contains("agent scan --allow-mass-delete --library notes"),
        "{}",
        text.stdout
    );
    let report = lab.agent(&["--json", "doctor"]).json();
    let check = check(&report, "held_deletions notes");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(check["fix"]
        .as_str()
        .unwrap()
        .contains("agent scan --allow-mass-delete --library notes"));

    // A restart keeps them held: its start-up scan records none of them either.
    drop(running);
    let running = Running::start(&lab);
    running.wait("the start-up scan ran", || {
        // One line of each run says so (the log has both runs).
        std::fs::read_to_string(&running.log)
            .is_ok_and(|l| l.matches("INFO watching libraries").count() >= 2)
    });
    assert_eq!(held_keys(), keys);
    assert_eq!(delete_events(&lab), recorded_before);
    drop(running);

    // Two held files come back before the release: only those still gone are recorded.
    let back: Vec<&String> = keys.iter().take(2).collect();
    for key in &back {
        let rel = key.strip_prefix("notes/").expect("a key of notes");
        lab.write(&format!("notes/{rel}"), "back\n");
    }
    let out = lab.scan(&["--allow-mass-delete", "--library", "notes"]);
    assert_eq!(out["deleted"], keys.len() as u64 - 2, "{out}");
    assert_eq!(delete_events(&lab), 118);
    assert!(held().is_none(), "the hold is over");
    assert!(library_status(&lab, "notes")
        .get("held_deletions")
        .is_none());
    let live = lab.db().live_paths();
    for key in back {
        assert!(live.contains(key), "{key} came back and stays");
    }
}

#[test]
fn the_brains_db_flag_has_the_brains_help() {
    let lab = Lab::new();
    for sub in [
        &["brain", "serve"][..],
        &["brain", "prune"],
        &["brain", "device", "add"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let help = lab.agent_raw(&args).success().stdout;
        assert!(!help.contains("LIB_SQLITE_PATH"), "{sub:?}: {help}");
        assert!(help.contains("The brain's SQLite file"), "{sub:?}: {help}");
    }
    let help = lab.agent_raw(&["scan", "--help"]).success().stdout;
    assert!(
        help.contains("LIB_SQLITE_PATH"),
        "the agent's --db keeps its help"
    );
}

#[test]
fn a_query_starting_with_a_dash_is_searched_after_double_dash() {
    let lab = Lab::with_config(NOTES);
    lab.write("notes/flags.txt", "pass -foo to the tool\n");
    lab.write("notes/other.txt", "nothing here\n");
    lab.scan(&[]);
    let found = lab.json(&["search", "--", "-foo"]);
    let paths: Vec<&str> = found["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert_eq!(paths, ["notes/flags.txt"], "{found}");

    let run = lab.agent(&["search", "-foo"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("agent search -- -foo"),
        "the error hints at `--` with the whole word: {}",
        run.stderr
    );
    let help = lab.agent(&["search", "--help"]).success().stdout;
    assert!(help.contains("agent search -- -x"), "{help}");
}
