//! What the repository promises about itself: its CI workflow runs `.ci/run` (it cannot run
//! here, so it is read), as root in a container, with a PostgreSQL service the tests reach.

use yaml_rust2::{Yaml, YamlLoader};

fn workflow() -> Yaml {
    let text = include_str!("../../.github/workflows/ci.yml");
    let mut docs = YamlLoader::load_from_str(text).expect("ci.yml is YAML");
    assert_eq!(docs.len(), 1, "one document");
    docs.remove(0)
}

#[test]
fn the_ci_workflow_runs_ci_run_as_root_in_a_container_beside_postgresql() {
    let wf = workflow();
    let jobs = wf["jobs"].as_hash().expect("jobs");
    assert!(!jobs.is_empty());
    let calls_ci_run = |job: &Yaml| {
        job["steps"].as_vec().is_some_and(|steps| {
            steps
                .iter()
                .any(|s| s["run"].as_str().is_some_and(|r| r.contains(".ci/run")))
        })
    };
    let (name, job) = jobs
        .iter()
        .find(|(_, job)| calls_ci_run(job))
        .expect("a job whose step runs .ci/run");
    let name = name.as_str().unwrap_or("?");
    assert!(
        job["container"]["image"].as_str().is_some(),
        "{name} runs in a container"
    );
    let options = job["container"]["options"].as_str().unwrap_or("");
    assert!(
        options.contains("--user root"),
        "{name} runs as root: {options:?}"
    );
    let postgres = &job["services"]["postgres"];
    assert!(
        postgres["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("postgres")),
        "{name} has a PostgreSQL service container"
    );
    let url = job["env"]["LIB_TEST_DATABASE_URL"]
        .as_str()
        .expect("LIB_TEST_DATABASE_URL");
    assert!(
        url.contains("@postgres:"),
        "the tests reach the service by its name: {url}"
    );
    // .ci/run takes the server's host from that URL instead of assuming 127.0.0.1.
    let ci_run = include_str!("../../.ci/run");
    assert!(ci_run.contains("BASH_REMATCH") && ci_run.contains("pg_isready -q -h \"$pg_host\""));
    let branches = wf["on"]["push"]["branches"]
        .as_vec()
        .expect("on: push: branches");
    assert!(
        branches.iter().any(|b| b.as_str() == Some("main")),
        "it runs on pushes to main"
    );
}
