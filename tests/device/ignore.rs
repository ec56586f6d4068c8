//! Ignore files, checked against git itself: a tree with nested ignore files is scanned by the
//! real binary, and the files it observes must be exactly those `git ls-files --others
//! --exclude-standard` lists for the same tree (a fresh repository with an empty index, git run
//! with no global or system configuration). `.libignore` files must behave as `.gitignore` files
//! do, and an ignore file that changes stops or starts the observation of files without any
//! delete event.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use crate::support::lab::Lab;

/// Git's cases, as (path, content); the ignore files are named `IGNORE` here and get their real
/// name when the tree is written.
pub(crate) const TREE: &[(&str, &str)] = &[
    (
        "IGNORE",
        "# a comment, then a blank line\n\n*.log\n!important.log\n/top.txt\nbuild/\n\
         docs/**/draft*\n\\#hash.txt\n\\!bang.txt\ntrailing.txt   \nvendor/\n!vendor/keep.js\n\
         **/cache\nlogs/\ngone/\n",
    ),
    ("a.log", "x"),
    ("important.log", "x"),
    ("top.txt", "x"),
    ("sub/top.txt", "x"),
    ("build/x.o", "x"),
    ("sub/build/y.o", "x"),
    ("docs/draft0.md", "x"),
    ("docs/a/b/draft1.md", "x"),
    ("docs/final.md", "x"),
    ("#hash.txt", "x"),
    ("!bang.txt", "x"),
    ("trailing.txt", "x"),
    ("vendor/lib.js", "x"),
    ("vendor/keep.js", "x"),
    ("deep/er/cache/c.bin", "x"),
    (
        "cache",
        "a file named like an ignored folder pattern is ignored too",
    ),
    ("logs/today.txt", "x"),
    ("other/logs", "a file: `logs/` only matches folders"),
    // A deeper ignore file overrides: it re-includes one kind of log, and anchors to its folder.
    ("sub/IGNORE", "!*.log\n/only-here.txt\n*.tmp\n!keep.tmp\n"),
    ("sub/x.log", "x"),
    ("sub/only-here.txt", "x"),
    ("sub/deeper/only-here.txt", "x"),
    ("sub/a.tmp", "x"),
    ("sub/keep.tmp", "x"),
    // Everything below, except markdown and folders.
    ("md/IGNORE", "*\n!*/\n!*.md\n"),
    ("md/a.md", "x"),
    ("md/a.txt", "x"),
    ("md/in/b.md", "x"),
    ("md/in/b.pdf", "x"),
    // An ignored folder whose own ignore file re-includes a file: git never looks inside.
    ("gone/IGNORE", "!*\n"),
    ("gone/kept.txt", "x"),
    ("sub/data.bin", "x"),
    ("plain.txt", "x"),
];

/// Git with no configuration but the repository's own; it must succeed.
pub(crate) fn git(dir: &Path, home: &Path, args: &[&str]) -> Option<std::process::Output> {
    let out = git_any(dir, home, args)?;
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

/// [`git`], whatever its exit status; `None` when git is not installed.
pub(crate) fn git_any(dir: &Path, home: &Path, args: &[&str]) -> Option<std::process::Output> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_SYSTEM", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home);
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_CEILING_DIRECTORIES",
    ] {
        cmd.env_remove(var);
    }
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("git: {e}"),
    }
}

/// What git says is untracked and not ignored in `tree`, `None` when there is no git here.
fn git_untracked(tree: &Path, home: &Path, exclude: Option<&str>) -> Option<BTreeSet<String>> {
    git(tree, home, &["init", "-q"])?;
    if let Some(text) = exclude {
        std::fs::write(tree.join(".git/info/exclude"), text).expect("write info/exclude");
    }
    let out = git(
        tree,
        home,
        &["ls-files", "-z", "--others", "--exclude-standard"],
    )?;
    Some(
        String::from_utf8(out.stdout)
            .expect("UTF-8 names")
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

pub(crate) fn write_tree(lab: &Lab, at: &str, name: &str) {
    for (rel, text) in TREE {
        let rel = rel.replace("IGNORE", name);
        lab.write(&format!("{at}/{rel}"), text);
    }
}

/// The files the agent observes in library `t`, relative to its root.
fn observed(lab: &Lab) -> BTreeSet<String> {
    lab.db()
        .observed()
        .into_iter()
        .filter_map(|row| row.path.strip_prefix("t/").map(str::to_owned))
        .collect()
}

pub(crate) fn config(respect_gitignore: bool) -> String {
    format!(
        "[[library]]\nname = \"t\"\npath = \"{{root}}/tree\"\nexclude = [\"**/.git/**\"]\n\
         respect_gitignore = {respect_gitignore}\n"
    )
}

pub(crate) fn git_missing() {
    eprintln!("SKIPPED: git is not installed (.ci/run installs it)");
}

#[test]
fn gitignore_files_and_info_exclude_select_what_git_selects() {
    let lab = Lab::with_config(&config(true));
    write_tree(&lab, "tree", ".gitignore");
    let home = tempfile::tempdir().expect("home");
    let Some(expected) = git_untracked(&lab.path("tree"), home.path(), Some("*.bin\nplain.txt\n"))
    else {
        return git_missing();
    };
    lab.scan(&[]);
    let got = observed(&lab);
    assert_eq!(got, expected, "the agent (left) and git (right) disagree");
    // The cases are all there: this is not two empty sets agreeing.
    for rel in [
        "important.log",
        "sub/x.log",
        "sub/top.txt",
        "md/in/b.md",
        "other/logs",
    ] {
        assert!(got.contains(rel), "{rel} is indexed");
    }
    for rel in [
        "a.log",
        "vendor/keep.js",
        "gone/kept.txt",
        "sub/data.bin",
        "plain.txt",
    ] {
        assert!(!got.contains(rel), "{rel} is ignored");
    }
}

#[test]
fn libignore_files_select_what_the_same_gitignore_files_select_in_git() {
    let lab = Lab::with_config(&config(false));
    write_tree(&lab, "tree", ".libignore");
    // Not honoured without respect_gitignore: it would ignore every file.
    lab.write("tree/.gitignore", "*\n");
    lab.scan(&[]);
    let got = observed(&lab);

    write_tree(&lab, "copy", ".gitignore");
    let home = tempfile::tempdir().expect("home");
    let Some(git) = git_untracked(&lab.path("copy"), home.path(), None) else {
        return git_missing();
    };
    let mut expected: BTreeSet<String> = git
        .into_iter()
        .map(|rel| match rel.strip_suffix(".gitignore") {
            Some(folder) => format!("{folder}.libignore"),
            None => rel,
        })
        .collect();
    expected.insert(".gitignore".to_owned());
    assert_eq!(got, expected, "the agent (left) and git (right) disagree");
}

#[test]
fn a_libignore_edit_stops_observing_without_a_delete_and_undoing_it_observes_again() {
    let lab = Lab::with_config(&config(false));
    lab.write("tree/keep.txt", "kept");
    lab.write("tree/notes/draft.txt", "draft");
    lab.write("tree/notes/final.txt", "final");
    lab.scan(&[]);
    assert_eq!(observed(&lab).len(), 3);

    lab.write("tree/.libignore", "draft.txt\n");
    let summary = lab.scan(&[]);
    assert_eq!(summary["ignored"], 1, "{summary}");
    assert_eq!(summary["deleted"], 0, "{summary}");
    assert_eq!(
        observed(&lab),
        BTreeSet::from([".libignore", "keep.txt", "notes/final.txt"].map(String::from))
    );
    let outbox = lab.db().outbox();
    assert!(
        outbox.iter().all(|e| e.event_type != "delete_file"),
        "no delete event: {outbox:?}"
    );
    assert!(
        lab.db()
            .live_paths()
            .contains(&"t/notes/draft.txt".to_owned()),
        "the file stays in the shared view, for the devices that have it"
    );

    lab.write("tree/.libignore", "");
    lab.scan(&[]);
    assert!(observed(&lab).contains("notes/draft.txt"));
    assert!(lab
        .db()
        .outbox()
        .iter()
        .all(|e| e.event_type != "delete_file"));
}

#[test]
fn a_folder_everything_is_ignored_in_is_not_an_empty_root() {
    // Ignoring every file is a decision, not an unmounted disk: no refusal, no deletion.
    let lab = Lab::with_config(&config(false));
    lab.write("tree/a.txt", "a");
    lab.scan(&[]);
    lab.write("tree/.libignore", "*\n");
    let summary = lab.scan(&[]);
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["ignored"], 1, "{summary}");
    assert!(observed(&lab).is_empty());
}

#[test]
fn forget_records_deletions_on_purpose_even_of_an_ignored_file_and_refuses_what_is_not_indexed() {
    let lab = Lab::with_config(&config(false));
    lab.write("tree/a.txt", "a");
    lab.write("tree/b.txt", "b");
    lab.write("tree/dir/c.txt", "c");
    lab.scan(&[]);
    lab.write("tree/.libignore", "a.txt\n");
    lab.scan(&[]);
    let deletes = |lab: &Lab| -> Vec<String> {
        lab.db()
            .outbox()
            .into_iter()
            .filter(|e| e.event_type == "delete_file")
            .map(|e| e.entity_key)
            .collect()
    };

    let a = lab.path("tree/a.txt");
    let missing = lab.path("tree/nope.txt");
    let refused = lab
        .agent(&[OsStr::new("forget"), a.as_os_str(), missing.as_os_str()])
        .failure();
    refused.assert_one_line_error(&["nope.txt", "not indexed"]);
    assert!(deletes(&lab).is_empty(), "nothing recorded after an error");

    let dir = lab.path("tree/dir");
    let out = lab.json(&[OsStr::new("forget"), a.as_os_str(), dir.as_os_str()]);
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["deleted"], 2, "{out}");
    assert_eq!(out["unobserved"], 1, "a.txt was no longer observed: {out}");
    assert_eq!(
        out["forgotten"],
        serde_json::json!(["t/a.txt", "t/dir/c.txt"])
    );
    assert_eq!(deletes(&lab), ["t/a.txt", "t/dir/c.txt"]);
    assert_eq!(
        observed(&lab),
        BTreeSet::from([".libignore", "b.txt"].map(String::from))
    );
    let live = lab.db().live_paths();
    assert!(!live.contains(&"t/a.txt".to_owned()) && !live.contains(&"t/dir/c.txt".to_owned()));
}
