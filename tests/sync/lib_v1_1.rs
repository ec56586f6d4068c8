//! A new agent joins a LIB v1.1 deployment before its brain moves: against a stand-in of the old
//! edge function (`support::old_brain`, written from the reference), it pushes, pulls pages that
//! carry no cursor, takes the old function's `x-webhook-secret` wake-ups when told to, does not
//! busy-loop on a brain that does not hold long-polls, and says once that the old brain cannot
//! give it what it pruned.

use std::time::Duration;

use crate::support::brain::SECRET;
use crate::support::lab::Lab;
use crate::support::net::reserved_port;
use crate::support::old_brain::{OldBrain, FUNCTION_PATH};
use crate::sync_run::Agent;

/// An agent woken by the old function's webhooks: LIB v1.1's header, accepted on purpose.
fn webhook_agent(old: &OldBrain) -> Agent {
    let port = reserved_port();
    let sync = format!(
        "realtime = \"webhook\"\nwebhook_auth = \"shared-secret\"\nlisten = \"127.0.0.1:{port}\"\n\
         public_url = \"http://127.0.0.1:{port}/webhook\"\ninterval_secs = 3600"
    );
    Agent::start_at(
        &format!("{}{FUNCTION_PATH}", old.addr),
        &sync,
        &[("LIB_WEBHOOK_SECRET", "hook-secret-0123456")],
    )
}

#[test]
fn two_agents_converge_through_lib_v1_1s_edge_function_woken_by_its_webhooks() {
    let old = OldBrain::start(SECRET);
    let a = webhook_agent(&old);
    let b = webhook_agent(&old);
    crate::support::wait::wait_until(
        "both webhooks registered",
        crate::support::wait::PATIENCE,
        || old.webhooks().len() == 2,
    );
    assert!(
        old.webhooks().iter().all(|(_, secret)| secret.is_some()),
        "each agent registered its webhook secret: {:?}",
        old.webhooks()
    );

    a.write("from-a.md", "written on A, through the old brain");
    b.wait_until("B has A's file", |db| Agent::has(db, "notes/from-a.md"));
    b.write("from-b.md", "written on B, back through the old brain");
    a.wait_until("A has B's file", |db| Agent::has(db, "notes/from-b.md"));
    assert_eq!(old.events(), 2, "each change was pushed once");
}

#[test]
fn a_long_polling_agent_pulls_from_a_brain_that_does_not_hold_long_polls_without_a_busy_loop() {
    let old = OldBrain::start(SECRET);
    let a = Agent::start_at(
        &format!("{}{FUNCTION_PATH}", old.addr),
        "realtime = \"longpoll\"\ninterval_secs = 3600",
        &[],
    );
    let before = old.pulls();
    std::thread::sleep(Duration::from_secs(3));
    let during = old.pulls() - before;
    // Asking again at once would be hundreds of requests in 3 s; the pause is 10 s.
    assert!(during <= 2, "{during} pulls in 3 s");
    drop(a);
}

#[test]
fn agent_sync_against_the_old_edge_function_pulls_every_page_and_warns_that_pruned_files_cannot_come_back(
) {
    let old = OldBrain::start(SECRET);
    let writer = Lab::with_config("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    // More than one page of the old function (it caps at 500; the agent asks for 200).
    for i in 0..450 {
        writer.write(&format!("notes/n{i:03}.md"), format!("note {i}"));
    }
    let env = [
        ("LIB_SUPABASE_FN_URL", old.url()),
        ("LIB_SYNC_SECRET", SECRET.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    writer.agent(&["scan"]).success();
    writer.agent_env(&["sync", "--push"], &env).success();
    assert_eq!(old.events(), 450);

    let reader = Lab::with_config("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    let run = reader.agent_env(&["sync"], &env).success();
    assert!(
        run.stderr.contains("has no /snapshot") && run.stderr.contains("365 days"),
        "the user is told what the old brain cannot give: {}",
        run.stderr
    );
    assert_eq!(reader.db().live_paths().len(), 450, "every page was pulled");
    assert_eq!(
        reader.db().kv("sync_after_id").as_deref(),
        Some("450"),
        "the cursor is the last event's id"
    );
    // Caught up: a second sync pulls nothing and fails nothing.
    reader.agent_env(&["sync", "--pull"], &env).success();
    assert_eq!(reader.db().live_paths().len(), 450);
}
