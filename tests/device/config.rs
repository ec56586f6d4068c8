//! The configuration contract (DESIGN.md, "Configuration"): defaults, then the file, then the
//! environment, then flags; one-line errors that name the place and the key; and the library
//! filters that the scanner and the watcher share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lib_agent::config::{Config, ConfigError, Overrides, Realtime};
use lib_agent::filter::LibraryFilter;

/// An environment made of these pairs only; the process environment is never read or written.
fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |key: &str| map.get(key).cloned()
}

const CONFIG_PATH: &str = "/home/u/.config/lib-agent/agent.toml";

/// Parses `text` as if read from [`CONFIG_PATH`].
fn parse_with(
    text: &str,
    vars: &[(&str, &str)],
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Some(Path::new(CONFIG_PATH)), &env(vars), overrides)
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, &[], &Overrides::default())
}

fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    parse_with(text, vars, &Overrides::default())
}

/// The error's message, checked to be a single line.
fn error(result: Result<Config, ConfigError>) -> String {
    let message = match result {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.to_string(),
    };
    assert!(!message.contains('\n'), "not one line: {message:?}");
    message
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should contain {part:?}"
        );
    }
}

fn home() -> PathBuf {
    dirs::home_dir().expect("tests need a home directory")
}

const NOTES: &str = r#"
[[library]]
name = "notes"
path = "/data/notes"
"#;

// ---- defaults --------------------------------------------------------------------------------

#[test]
fn no_file_gives_the_documented_defaults() {
    let config =
        Config::from_toml_str("", None, &env(&[]), &Overrides::default()).expect("defaults");
    assert_eq!(config.source, None);
    assert!(config.libraries.is_empty());
    assert!(config.store.path.is_absolute());
    assert!(
        config.store.path.ends_with("lib-agent/agent.db")
            || config.store.path.ends_with(".lib/agent.db")
    );
    assert_eq!(config.index.max_content_bytes, 262_144);
    assert_eq!(config.index.hash_threads, 0);
    assert_eq!(config.watch.debounce_ms, 100);
    let sync = &config.sync;
    assert_eq!(sync.brain_url, None);
    assert_eq!(sync.secret, None);
    assert_eq!(sync.webhook_secret, None);
    assert_eq!(sync.realtime, Realtime::Longpoll);
    assert_eq!(sync.push_debounce_ms, 250);
    assert_eq!(sync.interval_secs, 600);
    assert_eq!(sync.batch_size, 200);
    assert_eq!(sync.listen, "127.0.0.1:8001".parse().unwrap());
    assert_eq!(sync.public_url, None);
}

#[test]
fn default_store_path_is_in_the_platform_data_dir() {
    let config = parse("").expect("defaults");
    if let Some(data) = dirs::data_dir() {
        assert_eq!(config.store.path, data.join("lib-agent").join("agent.db"));
    }
}

#[test]
fn default_config_path_is_in_the_platform_config_dir() {
    if let Some(dir) = dirs::config_dir() {
        assert_eq!(
            lib_agent::config::default_config_path(),
            Some(dir.join("lib-agent").join("agent.toml"))
        );
    }
}

#[test]
fn library_globs_default_when_absent() {
    let config = parse(NOTES).expect("valid");
    let notes = config.library("notes").expect("notes");
    assert_eq!(notes.include, ["**/*"]);
    assert_eq!(
        notes.exclude,
        [
            "**/.git/**",
            "**/node_modules/**",
            "**/*.swp",
            "**/.DS_Store"
        ]
    );
}

#[test]
fn explicit_empty_exclude_excludes_nothing() {
    let config = parse(&format!("{NOTES}exclude = []\n")).expect("valid");
    assert!(config.libraries[0].exclude.is_empty());
}

#[test]
fn explicit_empty_include_is_refused() {
    let message = error(parse(&format!("{NOTES}include = []\n")));
    assert_contains(
        &message,
        &["line 5", "library[0].include", "includes nothing"],
    );
}

// ---- the file --------------------------------------------------------------------------------

#[test]
fn file_values_are_read() {
    let config = parse(
        r#"
[store]
path = "/var/lib/agent.db"

[[library]]
name = "notes"
path = "/data/notes"
include = ["**/*.md"]
exclude = ["drafts/**"]

[[library]]
name = "papers"
path = "/data/papers"

[index]
max_content_bytes = 1024
hash_threads = 3

[watch]
debounce_ms = 50

[sync]
brain_url = "https://brain.example.com/"
realtime = "webhook"
push_debounce_ms = 10
interval_secs = 60
batch_size = 500
listen = "0.0.0.0:9000"
public_url = "https://me.example.com/hook"
"#,
    )
    .expect("valid");
    assert_eq!(config.source.as_deref(), Some(Path::new(CONFIG_PATH)));
    assert_eq!(config.store.path, Path::new("/var/lib/agent.db"));
    assert_eq!(config.libraries.len(), 2);
    let notes = config.library("notes").expect("notes");
    assert_eq!(notes.path, Path::new("/data/notes"));
    assert_eq!(notes.include, ["**/*.md"]);
    assert_eq!(notes.exclude, ["drafts/**"]);
    assert_eq!(
        config.library("papers").expect("papers").path,
        Path::new("/data/papers")
    );
    assert!(config.library("other").is_none());
    assert_eq!(config.index.max_content_bytes, 1024);
    assert_eq!(config.index.hash_threads, 3);
    assert_eq!(config.watch.debounce_ms, 50);
    let sync = &config.sync;
    // The trailing slash goes, so clients can append "/ingest".
    assert_eq!(sync.brain_url.as_deref(), Some("https://brain.example.com"));
    assert_eq!(sync.realtime, Realtime::Webhook);
    assert_eq!(sync.push_debounce_ms, 10);
    assert_eq!(sync.interval_secs, 60);
    assert_eq!(sync.batch_size, 500);
    assert_eq!(sync.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(
        sync.public_url.as_deref(),
        Some("https://me.example.com/hook")
    );
}

#[test]
fn realtime_off_and_empty_urls() {
    let config =
        parse("[sync]\nrealtime = \"off\"\nbrain_url = \"\"\npublic_url = \"\"\n").expect("valid");
    assert_eq!(config.sync.realtime, Realtime::Off);
    assert_eq!(config.sync.brain_url, None);
    assert_eq!(config.sync.public_url, None);
}

#[test]
fn load_reads_the_file_named_by_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[watch]\ndebounce_ms = 7\n").expect("write");
    let overrides = Overrides {
        config_path: Some(path.clone()),
        db_path: None,
    };
    let config = Config::load(&overrides, &env(&[])).expect("valid");
    assert_eq!(config.source, Some(path));
    assert_eq!(config.watch.debounce_ms, 7);
}

#[test]
fn load_reads_the_file_named_by_lib_agent_config_when_no_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from_env = dir.path().join("env.toml");
    let from_flag = dir.path().join("flag.toml");
    std::fs::write(&from_env, "[watch]\ndebounce_ms = 1\n").expect("write");
    std::fs::write(&from_flag, "[watch]\ndebounce_ms = 2\n").expect("write");
    let vars = [(
        "LIB_AGENT_CONFIG",
        from_env.to_str().expect("utf-8 temp path"),
    )];

    let config = Config::load(&Overrides::default(), &env(&vars)).expect("valid");
    assert_eq!(config.watch.debounce_ms, 1);

    let flag = Overrides {
        config_path: Some(from_flag),
        db_path: None,
    };
    let config = Config::load(&flag, &env(&vars)).expect("valid");
    assert_eq!(
        config.watch.debounce_ms, 2,
        "the flag beats LIB_AGENT_CONFIG"
    );
}

#[test]
fn a_named_config_file_that_is_missing_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let overrides = Overrides {
        config_path: Some(missing.clone()),
        db_path: None,
    };
    let message = error(Config::load(&overrides, &env(&[])));
    assert_contains(&message, &[&missing.display().to_string(), "cannot read"]);

    let vars = [(
        "LIB_AGENT_CONFIG",
        missing.to_str().expect("utf-8 temp path"),
    )];
    let message = error(Config::load(&Overrides::default(), &env(&vars)));
    assert_contains(&message, &[&missing.display().to_string()]);
}

// ---- paths -----------------------------------------------------------------------------------

#[test]
fn tilde_is_the_home_directory() {
    let config =
        parse("[store]\npath = \"~/db/agent.db\"\n[[library]]\nname = \"home\"\npath = \"~\"\n")
            .expect("valid");
    assert_eq!(config.store.path, home().join("db/agent.db"));
    assert_eq!(config.libraries[0].path, home());

    let from_env = parse_env("", &[("LIB_SQLITE_PATH", "~/x.db")]).expect("valid");
    assert_eq!(from_env.store.path, home().join("x.db"));
}

#[test]
fn relative_paths_in_the_file_are_relative_to_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[store]\npath = \"state/agent.db\"\n[[library]]\nname = \"notes\"\npath = \"notes\"\n",
    )
    .expect("write");
    let overrides = Overrides {
        config_path: Some(path),
        db_path: None,
    };
    let config = Config::load(&overrides, &env(&[])).expect("valid");
    assert_eq!(config.store.path, dir.path().join("state/agent.db"));
    // Not canonicalised, and not required to exist: the scanner reports a missing root.
    assert_eq!(config.libraries[0].path, dir.path().join("notes"));
}

#[test]
fn relative_paths_from_environment_and_flags_are_relative_to_the_current_directory() {
    let cwd = std::env::current_dir().expect("cwd");
    let config = parse_env("", &[("LIB_SQLITE_PATH", "here.db")]).expect("valid");
    assert_eq!(config.store.path, cwd.join("here.db"));

    let flag = Overrides {
        config_path: None,
        db_path: Some("flag.db".into()),
    };
    let config = parse_with("", &[], &flag).expect("valid");
    assert_eq!(config.store.path, cwd.join("flag.db"));
}

// ---- precedence ------------------------------------------------------------------------------

#[test]
fn db_flag_beats_lib_sqlite_path_beats_the_file() {
    let file = "[store]\npath = \"/file.db\"\n";
    assert_eq!(
        parse(file).expect("valid").store.path,
        Path::new("/file.db")
    );

    let vars = [("LIB_SQLITE_PATH", "/env.db")];
    assert_eq!(
        parse_env(file, &vars).expect("valid").store.path,
        Path::new("/env.db")
    );

    let flag = Overrides {
        config_path: None,
        db_path: Some("/flag.db".into()),
    };
    assert_eq!(
        parse_with(file, &vars, &flag).expect("valid").store.path,
        Path::new("/flag.db")
    );
}

#[test]
fn environment_beats_the_file() {
    let file = r#"
[sync]
brain_url = "http://file.example"
batch_size = 100
listen = "0.0.0.0:9000"
"#;
    let config = parse_env(
        file,
        &[
            ("LIB_BRAIN_URL", "https://env.example"),
            ("LIB_SYNC_BATCH_SIZE", "300"),
            ("LIB_WEBHOOK_PORT", "9100"),
        ],
    )
    .expect("valid");
    assert_eq!(
        config.sync.brain_url.as_deref(),
        Some("https://env.example")
    );
    assert_eq!(config.sync.batch_size, 300);
    // Only the port changes: the file's address stays.
    assert_eq!(config.sync.listen, "0.0.0.0:9100".parse().unwrap());
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let file = "[sync]\nbrain_url = \"http://file.example\"\n";
    let config =
        parse_env(file, &[("LIB_BRAIN_URL", ""), ("LIB_SYNC_BATCH_SIZE", " ")]).expect("valid");
    assert_eq!(
        config.sync.brain_url.as_deref(),
        Some("http://file.example")
    );
    assert_eq!(config.sync.batch_size, 200);
}

#[test]
fn lib_brain_url_wins_over_lib_supabase_fn_url() {
    let supabase = "https://ref.supabase.co/functions/v1/lib-brain-sync";
    let config = parse_env("", &[("LIB_SUPABASE_FN_URL", supabase)]).expect("valid");
    assert_eq!(config.sync.brain_url.as_deref(), Some(supabase));

    let both = [
        ("LIB_SUPABASE_FN_URL", supabase),
        ("LIB_BRAIN_URL", "http://127.0.0.1:8787"),
    ];
    let config = parse_env("", &both).expect("valid");
    assert_eq!(
        config.sync.brain_url.as_deref(),
        Some("http://127.0.0.1:8787")
    );
}

#[test]
fn the_brain_ca_file_is_a_path_like_the_others_and_the_environment_wins() {
    // Relative to the config file's folder, and named by its line for errors.
    let file = "[sync]\nbrain_url = \"https://brain.lan\"\nbrain_ca_file = \"certs/ca.pem\"\n";
    let config = parse(file).expect("valid");
    let ca = config.sync.brain_ca_file.expect("set");
    assert_eq!(ca.path, Path::new("/home/u/.config/lib-agent/certs/ca.pem"));
    assert_eq!(
        ca.origin,
        format!("config {CONFIG_PATH}: line 3: sync.brain_ca_file")
    );
    // `~` is the home directory.
    let config = parse("[sync]\nbrain_ca_file = \"~/ca.pem\"\n").expect("valid");
    assert_eq!(
        config.sync.brain_ca_file.expect("set").path,
        home().join("ca.pem")
    );

    let config =
        parse_env(file, &[("LIB_BRAIN_CA_FILE", "/etc/ssl/private-ca.pem")]).expect("valid");
    let ca = config.sync.brain_ca_file.expect("set");
    assert_eq!(ca.path, Path::new("/etc/ssl/private-ca.pem"));
    assert_eq!(ca.origin, "environment LIB_BRAIN_CA_FILE");

    // Empty means unset, in the file and in the environment; the default is none.
    let config = parse_env(
        "[sync]\nbrain_ca_file = \"\"\n",
        &[("LIB_BRAIN_CA_FILE", "")],
    )
    .expect("valid");
    assert_eq!(config.sync.brain_ca_file, None);
    assert_eq!(parse("").expect("valid").sync.brain_ca_file, None);
}

#[test]
fn secrets_come_from_the_environment() {
    let vars = [
        ("LIB_SYNC_SECRET", "s3cret"),
        ("LIB_WEBHOOK_SECRET", "h00k"),
    ];
    let config = parse_env("", &vars).expect("valid");
    assert_eq!(config.sync.secret.as_deref(), Some("s3cret"));
    assert_eq!(config.sync.webhook_secret.as_deref(), Some("h00k"));
}

// ---- errors ----------------------------------------------------------------------------------

#[test]
fn a_secret_in_the_file_is_refused_and_points_to_the_variable() {
    let message = error(parse(
        "[sync]\nbrain_url = \"http://x\"\nsecret = \"hunter2\"\n",
    ));
    assert_contains(
        &message,
        &[CONFIG_PATH, "line 3", "sync.secret", "LIB_SYNC_SECRET"],
    );
    assert!(
        !message.contains("hunter2"),
        "the secret must not be echoed: {message}"
    );

    let message = error(parse("[sync]\nwebhook_secret = \"hunter2\"\n"));
    assert_contains(
        &message,
        &["line 2", "sync.webhook_secret", "LIB_WEBHOOK_SECRET"],
    );
}

#[test]
fn an_unknown_key_names_the_key_the_line_and_the_choices() {
    let message = error(parse(
        "[[library]]\nname = \"notes\"\npath = \"/n\"\nnmae = \"x\"\n",
    ));
    assert_eq!(
        message,
        format!(
            "config {CONFIG_PATH}: line 4: unknown field `nmae`, expected one of `name`, `path`, \
             `include`, `exclude`, `respect_gitignore`"
        )
    );
    let message = error(parse("[index]\nhash_thread = 2\n"));
    assert_contains(&message, &["line 2", "hash_thread"]);
    let message = error(parse("[unknown]\n"));
    assert_contains(&message, &["line 1", "unknown"]);
}

#[test]
fn a_toml_syntax_error_is_one_line_with_its_line_number() {
    let message = error(parse("[index]\nmax_content_bytes = = 3\n"));
    assert!(
        message.starts_with(&format!("config {CONFIG_PATH}: line 2: ")),
        "{message}"
    );
}

#[test]
fn a_wrongly_typed_value_names_its_line() {
    let message = error(parse("[watch]\ndebounce_ms = \"fast\"\n"));
    assert_contains(&message, &["line 2", "invalid type", "expected an integer"]);
}

#[test]
fn a_wrongly_typed_value_in_a_table_names_the_key() {
    let message = error(parse("[index]\nmax_content_bytes = \"big\"\n"));
    assert_eq!(
        message,
        format!(
            "config {CONFIG_PATH}: line 2: index.max_content_bytes: invalid type: string \"big\", \
             expected an integer"
        )
    );
    // Dotted keys and inline tables are the same keys, written differently.
    let message = error(parse("index.hash_threads = 1.5\n"));
    assert_contains(
        &message,
        &["line 1", "index.hash_threads: invalid type: floating point"],
    );
    let message = error(parse("[sync]\nbatch_size = 1\nlisten = { port = 1 }\n"));
    assert_contains(&message, &["line 3", "sync.listen: invalid type: map"]);
    // A table where a value goes, and a value where a table goes, say "table", not a Rust type.
    let message = error(parse("index = 3\n"));
    assert_eq!(
        message,
        format!("config {CONFIG_PATH}: line 1: index: invalid type: integer `3`, expected a table")
    );
}

#[test]
fn a_wrongly_typed_value_in_an_array_of_tables_names_the_element_and_the_key() {
    let text = "[[library]]\nname = \"a\"\npath = \"/a\"\n[[library]]\nname = 7\npath = \"/b\"\n";
    let message = error(parse(text));
    assert_eq!(
        message,
        format!(
            "config {CONFIG_PATH}: line 5: library[1].name: invalid type: integer `7`, expected \
             a string"
        )
    );
    let message = error(parse(
        "[[library]]\nname = \"a\"\npath = \"/a\"\ninclude = [\"*.md\",\n  3]\n",
    ));
    assert_contains(
        &message,
        &["line 5", "library[0].include[1]: invalid type: integer `3`"],
    );
    let message = error(parse("library = [1]\n"));
    assert_contains(
        &message,
        &[
            "line 1",
            "library[0]: invalid type: integer `1`, expected a table",
        ],
    );
}

#[test]
fn a_wrongly_typed_value_carries_its_key_as_data() {
    match parse("[watch]\ndebounce_ms = true\n") {
        Err(ConfigError::Type {
            file, line, key, ..
        }) => {
            assert_eq!(file.as_deref(), Some(Path::new(CONFIG_PATH)));
            assert_eq!(line, Some(2));
            assert_eq!(key, "watch.debounce_ms");
        }
        other => panic!("expected Type, got {other:?}"),
    }
}

#[test]
fn a_nested_unknown_key_names_the_key_and_its_line() {
    // In the second library, and in a sub-table of a library: the line says which one.
    let text = "[[library]]\nname = \"a\"\npath = \"/a\"\n[[library]]\nname = \"b\"\nnmae = 3\n";
    let message = error(parse(text));
    assert_eq!(
        message,
        format!(
            "config {CONFIG_PATH}: line 6: unknown field `nmae`, expected one of `name`, `path`, \
             `include`, `exclude`, `respect_gitignore`"
        )
    );
    let message = error(parse(
        "[[library]]\nname = \"a\"\n[library.filter]\nx = 1\n",
    ));
    assert_contains(&message, &["line 3", "unknown field `filter`"]);
    let message = error(parse("[sync.extra]\nx = 1\n"));
    assert_contains(&message, &["line 1", "unknown field `extra`"]);
    let message = error(parse("index = { hash_threads = 1, colour = 2 }\n"));
    assert_contains(&message, &["line 1", "unknown field `colour`"]);
}

#[test]
fn a_single_bracket_library_table_says_how_to_write_it() {
    let message = error(parse("[library]\nname = \"notes\"\npath = \"/n\"\n"));
    assert_contains(&message, &["line 1", "[[library]]"]);
}

#[test]
fn a_library_name_used_twice_is_refused() {
    let message = error(parse(&format!(
        "{NOTES}\n[[library]]\nname = \"notes\"\npath = \"/other\"\n"
    )));
    assert_contains(
        &message,
        &[
            CONFIG_PATH,
            "line 7",
            "library[1].name",
            "\"notes\"",
            "used twice",
            "library[0]",
        ],
    );
}

#[test]
fn names_that_differ_only_in_unicode_normalisation_are_the_same_library() {
    // "é" precomposed and decomposed: one entity key prefix after NFC.
    let text = "[[library]]\nname = \"caf\u{e9}\"\npath = \"/a\"\n[[library]]\nname = \"cafe\u{301}\"\npath = \"/b\"\n";
    assert_contains(&error(parse(text)), &["used twice"]);
}

#[test]
fn library_names_must_be_one_key_segment() {
    for bad in ["", "a/b", "a\\\\b", ".", "..", "a\\tb"] {
        let text = format!("[[library]]\nname = \"{bad}\"\npath = \"/x\"\n");
        let message = error(parse(&text));
        assert_contains(&message, &["line 2", "library[0].name"]);
    }
    let long = "x".repeat(256);
    let message = error(parse(&format!(
        "[[library]]\nname = \"{long}\"\npath = \"/x\"\n"
    )));
    assert_contains(&message, &["255 bytes"]);
}

#[test]
fn a_library_needs_a_name_and_a_path() {
    let message = error(parse("[[library]]\npath = \"/x\"\n"));
    assert_contains(&message, &["library[0].name is missing"]);
    let message = error(parse("[[library]]\nname = \"n\"\n"));
    assert_contains(&message, &["library[0].path is missing"]);
    let message = error(parse("[[library]]\nname = \"n\"\npath = \"\"\n"));
    assert_contains(&message, &["line 3", "library[0].path", "is empty"]);
}

#[test]
fn a_bad_glob_names_the_library_and_the_glob() {
    let message = error(parse(&format!("{NOTES}exclude = [\"**/*.swp\", \"a[\"]\n")));
    assert_contains(
        &message,
        &[
            CONFIG_PATH,
            "line 5",
            "library[0].exclude",
            "\"notes\"",
            "\"a[\"",
        ],
    );

    let message = error(parse(&format!("{NOTES}include = [\"/abs/**\"]\n")));
    assert_contains(
        &message,
        &["library[0].include", "\"/abs/**\"", "library root"],
    );
}

#[test]
fn bad_numbers_in_the_environment_name_the_variable() {
    let message = error(parse_env("", &[("LIB_SYNC_BATCH_SIZE", "abc")]));
    assert_eq!(
        message,
        "environment LIB_SYNC_BATCH_SIZE=\"abc\": not a number"
    );

    let message = error(parse_env("", &[("LIB_WEBHOOK_PORT", "70000")]));
    assert_contains(&message, &["LIB_WEBHOOK_PORT=\"70000\"", "port"]);

    let message = error(parse_env("", &[("LIB_BRAIN_URL", "brain.example")]));
    assert_contains(&message, &["LIB_BRAIN_URL=\"brain.example\"", "http://"]);
}

#[test]
fn batch_size_must_be_between_1_and_500() {
    for bad in ["0", "501", "-1"] {
        let message = error(parse(&format!("[sync]\nbatch_size = {bad}\n")));
        assert_contains(
            &message,
            &["line 2", "sync.batch_size", bad, "between 1 and 500"],
        );
        let message = error(parse_env("", &[("LIB_SYNC_BATCH_SIZE", bad)]));
        assert_contains(&message, &["LIB_SYNC_BATCH_SIZE"]);
    }
    assert_eq!(
        parse("[sync]\nbatch_size = 1\n")
            .expect("valid")
            .sync
            .batch_size,
        1
    );
}

#[test]
fn other_values_are_validated_with_file_line_and_key() {
    let cases = [
        (
            "[index]\nmax_content_bytes = 0\n",
            "index.max_content_bytes",
        ),
        ("[index]\nhash_threads = -1\n", "index.hash_threads"),
        ("[watch]\ndebounce_ms = -5\n", "watch.debounce_ms"),
        ("[sync]\ninterval_secs = 0\n", "sync.interval_secs"),
        ("[sync]\npush_debounce_ms = -1\n", "sync.push_debounce_ms"),
        ("[sync]\nrealtime = \"push\"\n", "sync.realtime"),
        ("[sync]\nlisten = \"localhost:8001\"\n", "sync.listen"),
        ("[sync]\nbrain_url = \"ftp://x\"\n", "sync.brain_url"),
        ("[sync]\npublic_url = \"me.example\"\n", "sync.public_url"),
        ("[store]\npath = \"\"\n", "store.path"),
    ];
    for (text, key) in cases {
        let message = error(parse(text));
        assert_contains(&message, &[CONFIG_PATH, "line 2", key]);
    }
}

#[test]
fn errors_carry_their_context_as_data() {
    match parse("[sync]\nbatch_size = 0\n") {
        Err(ConfigError::Invalid {
            file,
            line,
            key,
            value,
            ..
        }) => {
            assert_eq!(file.as_deref(), Some(Path::new(CONFIG_PATH)));
            assert_eq!(line, Some(2));
            assert_eq!(key, "sync.batch_size");
            assert_eq!(value, "0");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn debug_output_redacts_the_secrets() {
    let vars = [
        ("LIB_SYNC_SECRET", "s3cret-value"),
        ("LIB_WEBHOOK_SECRET", "h00k-value"),
    ];
    let config = parse_env("", &vars).expect("valid");
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("s3cret-value") && !debug.contains("h00k-value"),
        "{debug}"
    );
    assert_eq!(debug.matches("<redacted>").count(), 2, "{debug}");
    // Unset secrets show as unset, so the debug output still says whether one is missing.
    let debug = format!("{:?}", parse("").expect("valid").sync);
    assert!(
        debug.contains("secret: None") && !debug.contains("<redacted>"),
        "{debug}"
    );
}

#[test]
fn the_example_file_parses() {
    let text = include_str!("../../config/agent.example.toml");
    let config = parse(text).expect("the example config is valid");
    assert_eq!(config.libraries.len(), 1);
}

// ---- filters ---------------------------------------------------------------------------------

fn default_filter() -> LibraryFilter {
    let config = parse(NOTES).expect("valid");
    config.libraries[0].filter.clone()
}

#[test]
fn default_globs_include_top_level_and_nested_files() {
    let filter = default_filter();
    assert!(filter.includes_file("a.txt"));
    assert!(filter.includes_file("ideas/2026/today.md"));
    assert!(filter.includes_file(".hidden"));
}

#[test]
fn default_globs_exclude_git_node_modules_swap_files_and_ds_store() {
    let filter = default_filter();
    for excluded in [
        ".git/config",
        "a/b/.git/objects/ab/cdef",
        "node_modules/x/index.js",
        "web/node_modules/y.js",
        "draft.md.swp",
        "a/.b.swp",
        ".DS_Store",
        "photos/.DS_Store",
    ] {
        assert!(
            !filter.includes_file(excluded),
            "{excluded} should be excluded"
        );
    }
    // Near misses stay in.
    assert!(filter.includes_file("git/config"));
    assert!(filter.includes_file("my.git.md"));
    assert!(filter.includes_file("swp"));
}

#[test]
fn excluded_directories_are_pruned_whole() {
    let filter = default_filter();
    for dir in [
        ".git",
        "a/b/.git",
        "node_modules",
        "x/node_modules",
        ".git/objects",
    ] {
        assert!(filter.prunes_dir(dir), "{dir} should be pruned");
    }
    for dir in ["", "a", "a/b", "git", "x.swp", "notes.swp", ".DS_Store"] {
        assert!(!filter.prunes_dir(dir), "{dir} should be walked");
    }
}

#[test]
fn a_file_pattern_exclude_prunes_no_directory() {
    let filter =
        LibraryFilter::from_globs("t", &["**/*".into()], &["**/*.swp".into()]).expect("valid");
    assert!(!filter.prunes_dir("dir.swp"));
    assert!(filter.includes_file("dir.swp/inner.txt"));
    assert!(!filter.includes_file("dir.swp"));
}

#[test]
fn include_globs_narrow_the_library() {
    let filter = LibraryFilter::from_globs(
        "t",
        &["**/*.md".into(), "README".into()],
        &["drafts/**".into()],
    )
    .expect("valid");
    assert!(filter.includes_file("a.md"));
    assert!(filter.includes_file("x/y/a.md"));
    assert!(filter.includes_file("README"));
    assert!(!filter.includes_file("docs/README"));
    assert!(!filter.includes_file("a.txt"));
    assert!(!filter.includes_file("drafts/a.md"));
    assert!(filter.prunes_dir("drafts"));
    assert!(!filter.prunes_dir("x/drafts"));
}

#[test]
fn filter_errors_name_library_and_glob() {
    let err = LibraryFilter::from_globs("notes", &["{a,b".into()], &[]).expect_err("unclosed");
    assert_eq!(err.glob(), "{a,b");
    let message = err.to_string();
    assert!(
        message.starts_with("library \"notes\": glob \"{a,b\": "),
        "{message}"
    );
    assert!(!message.contains('\n'));
}

// ---- robustness ------------------------------------------------------------------------------

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Any file text and any environment value give a config or a one-line error, never a panic.
    #[test]
    fn never_panics_and_errors_are_one_line(
        text in "(\\[\\[?(library|sync|index|store|watch)\\]\\]?\n|[a-z_]{1,18} = (\"[ -~~é]{0,12}\"|-?[0-9]{1,21}|\\[\"[*/a-z\\[{,}.]{0,6}\"\\])\n|[\\x00-\\x7f]{0,4}){0,10}",
        value in "\\PC{0,8}",
    ) {
        let vars = [
            ("LIB_SYNC_BATCH_SIZE", value.as_str()),
            ("LIB_WEBHOOK_PORT", value.as_str()),
            ("LIB_BRAIN_URL", value.as_str()),
            ("LIB_SQLITE_PATH", value.as_str()),
        ];
        if let Err(e) = parse_env(&text, &vars) {
            proptest::prop_assert!(!e.to_string().contains('\n'), "{}", e);
        }
    }
}
