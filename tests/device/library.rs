//! `agent library add | remove | list`: the config file edited in place, created at the platform
//! path when there is none, and what a device observes of a library it no longer keeps.

use serde_json::Value;

use crate::support::lab::Lab;

/// The lab with a folder `notes` holding two files.
fn notes_lab(config: &str) -> Lab {
    let lab = Lab::with_config(config);
    lab.write("notes/a.md", "alpha");
    lab.write("notes/sub/b.md", "beta");
    lab
}

fn config_text(lab: &Lab) -> String {
    std::fs::read_to_string(&lab.config).expect("read the config file")
}

fn names(list: &Value) -> Vec<&str> {
    list["libraries"]
        .as_array()
        .expect("libraries")
        .iter()
        .map(|l| l["name"].as_str().expect("name"))
        .collect()
}

#[test]
fn library_add_creates_the_config_file_at_the_platform_path_and_a_scan_then_indexes_it() {
    let lab = notes_lab("");
    let xdg = lab.path("xdg");
    let env = [
        ("XDG_CONFIG_HOME", xdg.to_str().expect("utf-8")),
        ("HOME", lab.root().to_str().expect("utf-8")),
    ];
    let db = lab.db.to_str().expect("utf-8").to_owned();
    let notes = lab.path("notes");
    let run = lab
        .agent_raw_env(
            &[
                "--db",
                &db,
                "library",
                "add",
                notes.to_str().expect("utf-8"),
            ],
            &env,
        )
        .success();
    let file = xdg.join("lib-agent").join("agent.toml");
    assert!(file.is_file(), "created at the platform path: {run:?}");
    assert!(
        run.stdout.contains(file.to_str().expect("utf-8")),
        "says where: {}",
        run.stdout
    );
    assert!(run.stdout.contains("added library notes"), "{}", run.stdout);

    let list = lab
        .agent_raw_env(&["--db", &db, "--json", "library", "list"], &env)
        .success()
        .json();
    assert_eq!(list["config"].as_str(), file.to_str());
    assert_eq!(list["config_exists"], true);
    assert_eq!(names(&list), ["notes"]);
    assert_eq!(list["libraries"][0]["exists"], true);

    let scan = lab
        .agent_raw_env(&["--db", &db, "--json", "scan"], &env)
        .success()
        .json();
    assert_eq!(scan["libraries"][0]["name"], "notes");
    assert_eq!(scan["libraries"][0]["upserted"], 2);
    assert_eq!(lab.db().live_paths(), ["notes/a.md", "notes/sub/b.md"]);
}

#[test]
fn library_list_without_a_config_file_says_where_it_would_be() {
    let lab = Lab::new();
    let xdg = lab.path("xdg");
    let env = [("XDG_CONFIG_HOME", xdg.to_str().expect("utf-8"))];
    let run = lab.agent_raw_env(&["library", "list"], &env).success();
    assert!(run.stdout.contains("not created yet"), "{}", run.stdout);
    assert!(
        run.stdout.contains("lib-agent/agent.toml"),
        "{}",
        run.stdout
    );
    assert!(!xdg.exists(), "listing writes nothing");
}

#[test]
fn library_add_keeps_the_comments_and_order_of_the_file_and_its_globs_load() {
    let lab = notes_lab("# my libraries\n[index]\nmax_content_bytes = 1000 # small\n");
    lab.agent(&[
        "library",
        "add",
        "notes",
        "--name",
        "n",
        "--include",
        "**/*.md",
        "--exclude",
        "**/sub/**",
    ])
    .success();
    let text = config_text(&lab);
    assert!(
        text.starts_with("# my libraries\n[index]\nmax_content_bytes = 1000 # small\n"),
        "{text}"
    );
    let list = lab.json(&["library", "list"]);
    assert_eq!(names(&list), ["n"]);
    let lib = &list["libraries"][0];
    assert_eq!(
        lib["path"].as_str(),
        lab.path("notes")
            .canonicalize()
            .expect("canonical")
            .to_str()
    );
    assert_eq!(lib["include"], serde_json::json!(["**/*.md"]));
    assert_eq!(lib["exclude"], serde_json::json!(["**/sub/**"]));
    lab.scan(&[]);
    assert_eq!(lab.db().live_paths(), ["n/a.md"], "its globs apply");
}

#[test]
fn library_add_refuses_what_would_not_work_and_leaves_the_file_as_it_was() {
    let lab = notes_lab("# mine\n[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    std::fs::create_dir_all(lab.path("other")).expect("mkdir");
    let before = config_text(&lab);
    let refusals: &[(&[&str], &[&str])] = &[
        (
            &["library", "add", "missing"],
            &["missing", "does not exist"],
        ),
        (
            &["library", "add", "notes/a.md"],
            &["a.md", "is not a folder"],
        ),
        (
            &["library", "add", "other", "--name", "notes"],
            &["\"notes\" exists already", "--name"],
        ),
        (
            &["library", "add", "notes", "--name", "again"],
            &["is library \"notes\" already"],
        ),
        (
            &["library", "add", "notes/sub"],
            &["is inside library \"notes\""],
        ),
        (
            &["library", "add", ".", "--name", "all"],
            &["holds library \"notes\""],
        ),
        (
            &["library", "add", "other", "--name", "a/b"],
            &["library[1].name", "nothing was written"],
        ),
        (
            &["library", "add", "other", "--include", "[x"],
            &["library[1].include", "nothing was written"],
        ),
    ];
    for (args, parts) in refusals {
        lab.agent(args).failure().assert_one_line_error(parts);
        assert_eq!(config_text(&lab), before, "{args:?} changed the file");
    }
    let entries: Vec<_> = std::fs::read_dir(lab.root())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(entries.is_empty(), "no temporary file left: {entries:?}");
}

#[test]
fn library_remove_stops_observing_it_and_keeps_its_entries_in_the_shared_view() {
    let lab = notes_lab("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n\n# the other\n[[library]]\nname = \"other\"\npath = \"{root}/other\"\n");
    lab.write("other/c.md", "gamma");
    lab.scan(&[]);
    let events_before = lab.db().outbox().len();

    let out = lab.json(&["library", "remove", "notes"]);
    assert_eq!(out["removed"], "notes");
    assert_eq!(out["unobserved"], 2);
    assert_eq!(out["deleted"], 0);
    let text = config_text(&lab);
    assert!(!text.contains("name = \"notes\""), "{text}");
    assert!(
        text.contains("# the other\n[[library]]\nname = \"other\""),
        "{text}"
    );

    let db = lab.db();
    let observed: Vec<String> = db.observed().into_iter().map(|o| o.path).collect();
    assert_eq!(observed, ["other/c.md"], "no longer observed here");
    assert_eq!(
        db.live_paths(),
        ["notes/a.md", "notes/sub/b.md", "other/c.md"],
        "other devices may still have them"
    );
    assert_eq!(db.outbox().len(), events_before, "no delete event");
}

#[test]
fn library_remove_forget_records_the_deletion_of_every_file_it_observed() {
    let lab = notes_lab("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    lab.scan(&[]);
    let out = lab.json(&["library", "remove", "notes", "--forget"]);
    assert_eq!(out["unobserved"], 2);
    assert_eq!(out["deleted"], 2);
    let db = lab.db();
    assert!(db.live_paths().is_empty());
    let deletes: Vec<String> = db
        .outbox()
        .into_iter()
        .filter(|e| e.event_type == "delete_file")
        .map(|e| e.entity_key)
        .collect();
    assert_eq!(deletes, ["notes/a.md", "notes/sub/b.md"]);
    assert!(db.observed().is_empty());
}

#[test]
fn library_remove_of_an_unknown_name_lists_the_libraries_and_changes_nothing() {
    let lab = notes_lab("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    let before = config_text(&lab);
    lab.agent(&["library", "remove", "papers"])
        .failure()
        .assert_one_line_error(&["no library named \"papers\"", "there are: notes"]);
    assert_eq!(config_text(&lab), before);
}

#[test]
fn a_folder_named_on_the_command_line_says_how_to_keep_it() {
    let lab = notes_lab("");
    let run = lab.agent(&["--json", "scan", "notes"]).success();
    assert!(
        run.stderr.contains("is not a configured library")
            && run.stderr.contains("agent library add"),
        "{}",
        run.stderr
    );
    let configured = notes_lab("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    let run = configured.agent(&["--json", "scan", "notes"]).success();
    assert!(
        !run.stderr.contains("agent library add"),
        "configured: no hint: {}",
        run.stderr
    );
}

#[test]
fn agent_run_with_a_folder_that_does_not_exist_fails_at_start() {
    let lab = Lab::new();
    lab.agent(&["run", "nowhere"])
        .failure()
        .assert_one_line_error(&["nowhere"]);
}

/// `agent run` on the lab, its output in a log file; killed when dropped.
pub(crate) struct Running {
    child: std::process::Child,
    pub(crate) log: std::path::PathBuf,
}

impl Running {
    pub(crate) fn start(lab: &Lab) -> Running {
        let log = lab.path("run.log");
        let mut cmd = crate::support::process::agent(Some(&log));
        cmd.arg("--db")
            .arg(&lab.db)
            .arg("--config")
            .arg(&lab.config)
            .arg("run")
            .current_dir(lab.root());
        let running = Running {
            child: cmd.spawn().expect("start agent run"),
            log,
        };
        running.wait("the agent watches", || {
            std::fs::read_to_string(&running.log).is_ok_and(|l| l.contains("watching"))
        });
        running
    }

    #[track_caller]
    pub(crate) fn wait(&self, what: &str, done: impl FnMut() -> bool) {
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::support::wait::wait_until(what, crate::support::wait::PATIENCE, done)
        }));
        if waited.is_err() {
            panic!(
                "{what}: not within {:?}; the agent said:\n{}",
                crate::support::wait::PATIENCE,
                crate::support::process::log_tail(&self.log, 30)
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn live(lab: &Lab) -> Vec<String> {
    if !lab.db.exists() {
        return Vec::new();
    }
    lab.db().live_paths()
}

#[test]
fn a_running_agent_follows_library_add_and_remove_without_a_restart() {
    let lab = notes_lab("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    lab.write("papers/old.txt", "there before the add");
    let agent = Running::start(&lab);
    agent.wait("the start-up scan", || live(&lab).len() == 2);

    lab.agent(&["library", "add", "papers"]).success();
    agent.wait("the added library is scanned", || {
        live(&lab).contains(&"papers/old.txt".to_owned())
    });
    lab.write("papers/new.txt", "written after the add");
    agent.wait("the added library is watched", || {
        live(&lab).contains(&"papers/new.txt".to_owned())
    });

    lab.agent(&["library", "remove", "papers"]).success();
    // Once the agent has let the library go, it says so; a file written after that stays out.
    agent.wait("the removed library is let go", || {
        std::fs::read_to_string(&agent.log).is_ok_and(|l| l.contains("not watched any more"))
    });
    lab.write("papers/later.txt", "written after the remove");
    lab.write("notes/c.md", "still watched");
    agent.wait("the library still configured is watched", || {
        live(&lab).contains(&"notes/c.md".to_owned())
    });
    assert!(
        !live(&lab).contains(&"papers/later.txt".to_owned()),
        "a removed library is not watched"
    );
}

#[test]
fn a_running_agent_keeps_its_libraries_when_the_config_file_stops_loading() {
    let lab = notes_lab("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    let agent = Running::start(&lab);
    agent.wait("the start-up scan", || live(&lab).len() == 2);
    std::fs::write(&lab.config, "[[library]]\nname = \"notes\"\n").expect("break the file");
    agent.wait("the broken file is said", || {
        std::fs::read_to_string(&agent.log).is_ok_and(|l| l.contains("until the file is fixed"))
    });
    lab.write("notes/c.md", "still watched");
    agent.wait("the library is still watched", || {
        live(&lab).contains(&"notes/c.md".to_owned())
    });
}
