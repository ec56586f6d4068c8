//! `agent explain PATH|KEY`: the rule that decided, said as `git check-ignore -v` says it (and
//! checked against git itself), whether the next look reads the file and why, the shared view's
//! winner and conflict, this device's events for it, and whether the brain agrees.

use std::ffi::OsStr;
use std::path::Path;

use serde_json::Value;

use crate::conflicts::conflict_lab;
use crate::ignore::{config, git, git_any, git_missing, write_tree, TREE};
use crate::support::brain::SECRET;
use crate::support::brain_blocking::BlockingBrain;
use crate::support::lab::Lab;

fn explain(lab: &Lab, target: &str) -> Value {
    lab.json(&["explain", "--offline", target])
}

/// What `git check-ignore -v --no-index` says of `rel` in `tree`: `None` when no pattern
/// matches, else (ignore file relative to the tree, line, pattern).
fn git_verdict(tree: &Path, home: &Path, rel: &str) -> Option<Option<(String, usize, String)>> {
    // Exit status 1 says "not ignored"; -n prints the non-matching paths too.
    let out = git_any(tree, home, &["check-ignore", "-v", "-n", "--no-index", rel])?;
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "git check-ignore {rel}: {out:?}"
    );
    let line = String::from_utf8(out.stdout).expect("UTF-8");
    let (source, _path) = line.trim_end_matches('\n').split_once('\t').expect("a tab");
    if source == "::" {
        return Some(None);
    }
    // source:line:pattern; the pattern may hold colons, the source here does not.
    let mut parts = source.splitn(3, ':');
    let file = parts.next().expect("file").to_owned();
    let number = parts.next().expect("line").parse().expect("a line number");
    let pattern = parts.next().expect("pattern").to_owned();
    Some(Some((file, number, pattern)))
}

#[test]
fn the_deciding_ignore_line_is_the_one_git_check_ignore_names() {
    let lab = Lab::with_config(&config(true));
    write_tree(&lab, "tree", ".gitignore");
    let home = tempfile::tempdir().expect("home");
    let tree = lab.path("tree");
    if git(&tree, home.path(), &["init", "-q"]).is_none() {
        return git_missing();
    }
    let mut compared = (0, 0, 0);
    for (rel, _) in TREE.iter().filter(|(rel, _)| !rel.ends_with("IGNORE")) {
        let Some(expected) = git_verdict(&tree, home.path(), rel) else {
            return git_missing();
        };
        let got = explain(&lab, &format!("t/{rel}"));
        let decision = &got["decision"];
        match expected {
            None => {
                assert_eq!(decision["rule"], "indexed", "{rel}: {got:#}");
                assert!(decision.get("reincluded_by").is_none(), "{rel}: {got:#}");
                compared.0 += 1;
            }
            Some((file, line, pattern)) => {
                let hit = if pattern.starts_with('!') {
                    assert_eq!(decision["rule"], "indexed", "{rel}: {got:#}");
                    compared.1 += 1;
                    &decision["reincluded_by"]
                } else {
                    assert_eq!(decision["rule"], "ignored", "{rel}: {got:#}");
                    compared.2 += 1;
                    &decision["by"]
                };
                assert_eq!(
                    hit["file"],
                    tree.join(&file).to_str().expect("UTF-8"),
                    "{rel}"
                );
                assert_eq!(hit["line"], line, "{rel}: {got:#}");
                assert_eq!(hit["pattern"], pattern.as_str(), "{rel}: {got:#}");
            }
        }
    }
    // Every kind of answer was compared: not three empty sets agreeing.
    assert!(
        compared.0 >= 3 && compared.1 >= 2 && compared.2 >= 8,
        "{compared:?}"
    );
}

#[test]
fn globs_decide_before_ignore_files_and_the_text_says_which() {
    let lab = Lab::with_config(
        "[[library]]\nname = \"n\"\npath = \"{root}/n\"\ninclude = [\"**/*.md\", \"**/*.txt\"]\n\
         exclude = [\"drafts/**\"]\n",
    );
    lab.write("n/.libignore", "# logs\nold/\n");
    lab.write("n/a.md", "a");
    lab.write("n/b.pdf", "b");
    lab.write("n/drafts/c.md", "c");
    lab.write("n/old/d.md", "d");
    lab.scan(&[]);

    let indexed = explain(&lab, "n/a.md");
    assert_eq!(indexed["decision"]["rule"], "indexed");
    assert_eq!(indexed["decision"]["include"], "**/*.md");
    let not_included = explain(&lab, "n/b.pdf");
    assert_eq!(not_included["decision"]["rule"], "not_included");
    let excluded = explain(&lab, "n/drafts/c.md");
    assert_eq!(excluded["decision"]["exclude"], "drafts/**");
    assert_eq!(excluded["watch"]["watched"], false);
    assert!(
        excluded["watch"]["why"]
            .as_str()
            .expect("why")
            .contains("excluded whole"),
        "{excluded:#}"
    );
    let ignored = explain(&lab, "n/old/d.md");
    assert_eq!(ignored["decision"]["rule"], "ignored");
    assert_eq!(ignored["decision"]["by"]["line"], 2);
    assert_eq!(
        ignored["decision"]["by"]["matched"],
        lab.path("n/old").to_str().expect("UTF-8")
    );

    // A path on disk, relative to where the command runs, names the same entity.
    let text = lab
        .agent(&[
            OsStr::new("explain"),
            OsStr::new("--offline"),
            lab.path("n/old/d.md").as_os_str(),
        ])
        .success()
        .stdout;
    assert!(text.starts_with("n/old/d.md\n"), "{text}");
    let ignore_file = lab.path("n/.libignore");
    assert!(
        text.contains(&format!("is ignored by {}:2:old/", ignore_file.display())),
        "{text}"
    );
}

#[test]
fn it_says_whether_the_next_look_reads_the_file_and_why() {
    let lab = Lab::with_config("[[library]]\nname = \"n\"\npath = \"{root}/n\"\n");
    lab.write("n/a.txt", "first");
    lab.scan(&[]);
    let unchanged = explain(&lab, "n/a.txt");
    assert_eq!(unchanged["disk"]["next_look_reads"], false, "{unchanged:#}");
    assert_eq!(unchanged["disk"]["observed"]["bytes"], 5);
    assert_eq!(unchanged["text"]["bytes"], 5);
    assert_eq!(unchanged["text"]["truncated"], false);

    lab.write("n/a.txt", "second, longer");
    let changed = explain(&lab, "n/a.txt");
    assert_eq!(changed["disk"]["next_look_reads"], true);
    assert!(
        changed["disk"]["why"]
            .as_str()
            .expect("why")
            .contains("size 5 -> 14"),
        "{changed:#}"
    );

    lab.write("n/new.txt", "new");
    let unseen = explain(&lab, "n/new.txt");
    assert_eq!(unseen["disk"]["next_look_reads"], true);
    assert!(unseen["shared"].is_null());

    std::fs::remove_file(lab.path("n/a.txt")).expect("remove");
    let gone = explain(&lab, "n/a.txt");
    assert_eq!(gone["disk"]["kind"], "missing");
    assert!(
        gone["disk"]["why"]
            .as_str()
            .expect("why")
            .contains("records its deletion"),
        "{gone:#}"
    );
}

#[test]
fn a_long_text_is_reported_cut_at_the_cap() {
    let lab = Lab::with_config(
        "[index]\nmax_content_bytes = 100\n[[library]]\nname = \"n\"\npath = \"{root}/n\"\n",
    );
    lab.write("n/long.txt", "word ".repeat(100));
    lab.scan(&[]);
    let out = explain(&lab, "n/long.txt");
    assert_eq!(out["text"]["bytes"], 100, "{out:#}");
    assert_eq!(out["text"]["truncated"], true, "{out:#}");
}

#[test]
fn the_winner_the_open_conflict_and_both_event_logs_are_shown() {
    let (lab, theirs) = conflict_lab(Some("line 1\ntheirs\n"), true);
    let out = explain(&lab, "notes/a.md");
    let ours = lab.db().file("notes/a.md");
    assert_eq!(
        out["shared"]["event_ulid"],
        ours.event_ulid.as_deref().expect("ulid")
    );
    let versions = out["conflict"].as_array().expect("conflict");
    assert_eq!(versions.len(), 2, "{out:#}");
    assert!(versions
        .iter()
        .any(|v| v["event_ulid"] == theirs.event_ulid.as_str() && v["winner"] == false));
    assert_eq!(
        out["outbox"][0]["state"], "pending",
        "never pushed: {out:#}"
    );
    assert_eq!(out["inbox"][0]["event_ulid"], theirs.event_ulid.as_str());
    assert_eq!(out["inbox"][0]["state"], "applied");

    let text = lab
        .agent(&["explain", "--offline", "notes/a.md"])
        .success()
        .stdout;
    assert!(text.contains("conflict  open, 2 versions"), "{text}");
    assert!(
        text.contains("phone (0-dev)"),
        "devices by the brain's names: {text}"
    );
}

#[test]
fn with_a_brain_it_says_whether_the_brains_entity_matches() {
    let lab = Lab::with_config("[[library]]\nname = \"n\"\npath = \"{root}/n\"\n");
    let brain = BlockingBrain::start(lab.root());
    lab.write_config(&format!(
        "[[library]]\nname = \"n\"\npath = \"{{root}}/n\"\n[sync]\nbrain_url = \"{}\"\n",
        brain.url()
    ));
    let env = [("LIB_SYNC_SECRET", SECRET)];
    lab.write("n/a.txt", "one");
    lab.write("n/b.txt", "bee");
    lab.agent_env(&["scan"], &env).success();
    lab.agent_env(&["sync"], &env).success();
    let synced = serde_json::from_str::<Value>(
        &lab.agent_env(&["--json", "explain", "n/a.txt"], &env)
            .success()
            .stdout,
    )
    .expect("JSON");
    assert_eq!(synced["brain"]["state"], "entity", "{synced:#}");
    assert_eq!(synced["brain"]["matches"], true, "{synced:#}");
    assert_eq!(synced["outbox"][0]["state"], "pushed");

    lab.write("n/a.txt", "two");
    lab.agent_env(&["scan"], &env).success();
    let ahead = serde_json::from_str::<Value>(
        &lab.agent_env(&["--json", "explain", "n/a.txt"], &env)
            .success()
            .stdout,
    )
    .expect("JSON");
    assert_eq!(
        ahead["brain"]["matches"], false,
        "not pushed yet: {ahead:#}"
    );
    assert_eq!(ahead["outbox"][1]["state"], "pending");

    let absent = serde_json::from_str::<Value>(
        &lab.agent_env(&["--json", "explain", "n/never.txt"], &env)
            .success()
            .stdout,
    )
    .expect("JSON");
    assert_eq!(absent["brain"]["state"], "absent", "{absent:#}");
}

#[test]
fn a_path_outside_every_library_is_a_clear_error() {
    let lab = Lab::with_config("[[library]]\nname = \"n\"\npath = \"{root}/n\"\n");
    lab.write("elsewhere/x.txt", "x");
    let out = lab
        .agent(&[
            OsStr::new("explain"),
            lab.path("elsewhere/x.txt").as_os_str(),
        ])
        .failure();
    out.assert_one_line_error(&["x.txt", "in no library", "n at"]);
    lab.agent(&["explain", "../.."])
        .failure()
        .assert_one_line_error(&["in no library"]);
}

#[test]
fn under_agent_run_the_folder_is_watched_unless_it_is_ignored() {
    let lab = Lab::with_config("[[library]]\nname = \"n\"\npath = \"{root}/n\"\n");
    lab.write("n/.libignore", "skip/\n");
    lab.write("n/a.txt", "a");
    lab.write("n/skip/b.txt", "b");
    let running = crate::library::Running::start(&lab);
    running.wait("explain sees the watch", || {
        explain(&lab, "n/a.txt")["watch"]["watched"] == true
    });
    let out = explain(&lab, "n/a.txt");
    assert_eq!(out["watch"]["agent_running"], true, "{out:#}");
    let skipped = explain(&lab, "n/skip/b.txt");
    assert_eq!(skipped["watch"]["watched"], false, "{skipped:#}");
    assert!(
        skipped["watch"]["why"]
            .as_str()
            .expect("why")
            .contains("neither walked nor watched"),
        "{skipped:#}"
    );
}
