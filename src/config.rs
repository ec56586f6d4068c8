//! Configuration, in layers: defaults, then the TOML file, then the environment, then flags.
//!
//! This is where every run of `agent` starts: `main` parses the flags into [`Overrides`] and calls
//! [`Config::load`] with [`process_env`]; everything downstream (the store, the scanner and the
//! watcher through [`crate::filter`], the pusher, the puller and the webhook listener) reads the
//! resulting [`Config`] and nothing else. `config/agent.example.toml` documents every key.
//!
//! The environment is passed in as a function rather than read here, so tests can give each case
//! its own environment without touching the process's (no global mutable state).
//!
//! Errors are one line that says where (the file and line, the environment variable, the flag)
//! and which key, because the user's next step is to open that file at that line.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;
use unicode_normalization::UnicodeNormalization;

use crate::filter::{FilterError, LibraryFilter};
use crate::tls::CaFile;

pub mod edit;

/// The config file path when `--config` is not given (checked before the platform default).
pub const ENV_CONFIG: &str = "LIB_AGENT_CONFIG";
/// The local database, over `[store] path`.
pub const ENV_SQLITE_PATH: &str = "LIB_SQLITE_PATH";
/// The brain's URL, over `[sync] brain_url` and over [`ENV_SUPABASE_FN_URL`].
pub const ENV_BRAIN_URL: &str = "LIB_BRAIN_URL";
/// The LIB v1.1 name of the brain's URL.
pub const ENV_SUPABASE_FN_URL: &str = "LIB_SUPABASE_FN_URL";
/// An extra CA file trusted for an https:// brain, over `[sync] brain_ca_file`.
pub const ENV_BRAIN_CA_FILE: &str = "LIB_BRAIN_CA_FILE";
/// The shared secret sent to the brain; only ever read from the environment.
pub const ENV_SYNC_SECRET: &str = "LIB_SYNC_SECRET";
/// This device's token for the brain (`agent brain device add`), over `[sync] token_file`.
pub const ENV_DEVICE_TOKEN: &str = "LIB_DEVICE_TOKEN";
/// The secret that signs webhook deliveries; only ever read from the environment.
pub const ENV_WEBHOOK_SECRET: &str = "LIB_WEBHOOK_SECRET";
/// The webhook listener's port, over the port of `[sync] listen`.
pub const ENV_WEBHOOK_PORT: &str = "LIB_WEBHOOK_PORT";
/// Events per push or pull request, over `[sync] batch_size`.
pub const ENV_SYNC_BATCH_SIZE: &str = "LIB_SYNC_BATCH_SIZE";

/// Include globs of a library that does not set `include`.
pub const DEFAULT_INCLUDE: &[&str] = &["**/*"];
/// Exclude globs of a library that does not set `exclude`.
pub const DEFAULT_EXCLUDE: &[&str] = &[
    "**/.git/**",
    "**/node_modules/**",
    "**/*.swp",
    "**/.DS_Store",
];
pub const DEFAULT_MAX_CONTENT_BYTES: usize = 262_144;
pub const DEFAULT_WATCH_DEBOUNCE_MS: u64 = 100;
pub const DEFAULT_PUSH_DEBOUNCE_MS: u64 = 250;
pub const DEFAULT_INTERVAL_SECS: u64 = 600;
pub const DEFAULT_BATCH_SIZE: usize = 200;
/// The brain refuses bigger batches (DESIGN.md, wire protocol).
pub const MAX_BATCH_SIZE: usize = 500;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8001";
/// A library name becomes the first segment of every entity key and a directory-like name in
/// tools; 255 bytes is the common file-name limit.
pub const MAX_LIBRARY_NAME_BYTES: usize = 255;

/// Everything the agent needs to know before it starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file actually read, if any.
    pub source: Option<PathBuf>,
    pub store: StoreConfig,
    pub libraries: Vec<LibraryConfig>,
    pub index: IndexConfig,
    pub watch: WatchConfig,
    pub sync: SyncConfig,
    pub metrics: MetricsConfig,
}

/// `[store]`: the local SQLite database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Absolute. `--db`, else `LIB_SQLITE_PATH`, else `[store] path`, else the platform data dir
    /// (`lib-agent/agent.db`), else `./.lib/agent.db`.
    pub path: PathBuf,
}

/// One `[[library]]`: a folder whose files become entities `<name>/<relative path>`.
#[derive(Debug, Clone)]
pub struct LibraryConfig {
    /// Validated and NFC-normalised, like the entity keys it prefixes.
    pub name: String,
    /// Absolute; it may not exist (the scanner reports a missing root, not the config).
    pub path: PathBuf,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `include` and `exclude`, compiled once, when the library is made.
    pub filter: LibraryFilter,
    /// `respect_gitignore`: `.gitignore` files and `.git/info/exclude` count as well as
    /// `.libignore` files (off by default: a `.gitignore` often lists exactly the files a
    /// library is for, such as PDFs kept out of a repository).
    pub respect_gitignore: bool,
}

impl LibraryConfig {
    /// A library with its globs compiled: a glob that cannot be used is an error here, never a
    /// surprise in the middle of a scan.
    pub fn new(
        name: String,
        path: PathBuf,
        include: Vec<String>,
        exclude: Vec<String>,
    ) -> Result<LibraryConfig, FilterError> {
        let filter = LibraryFilter::from_globs(&name, &include, &exclude)?;
        Ok(LibraryConfig {
            name,
            path,
            include,
            exclude,
            filter,
            respect_gitignore: false,
        })
    }
}

/// `[index]`: what "index one path" keeps.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Text kept for search per file, at least 1.
    pub max_content_bytes: usize,
    /// Hashing threads; 0 means one per core.
    pub hash_threads: usize,
}

/// `[watch]`: the file watcher.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub debounce_ms: u64,
}

/// `[metrics]`: `agent run`'s own Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served; `None` (the default): not served. Always a loopback
    /// address: the route takes no credential, and says what this device holds and does.
    pub listen: Option<SocketAddr>,
}

/// `[sync]`: talking to the brain. Without a `brain_url` the agent runs local-only.
#[derive(Clone)]
pub struct SyncConfig {
    /// `LIB_BRAIN_URL`, else `LIB_SUPABASE_FN_URL`, else `[sync] brain_url`; http(s), no
    /// trailing `/`. `None`: local-only.
    pub brain_url: Option<String>,
    /// `LIB_BRAIN_CA_FILE`, else `[sync] brain_ca_file`: certificates (PEM) trusted for an
    /// https:// brain besides the web PKI roots, for a brain behind a private CA. Read when the
    /// brain client is built, not here: commands that do not sync do not need it.
    pub brain_ca_file: Option<CaFile>,
    /// Only from `LIB_SYNC_SECRET`: a secret in a file ends up in backups and dotfile repos.
    pub secret: Option<String>,
    /// `LIB_DEVICE_TOKEN`: this device's own credential. With one (or a `token_file`) the agent
    /// sends it and this device's id, never `secret`.
    pub token: Option<String>,
    /// `[sync] token_file`: a file holding the token, readable by its owner only. Read when the
    /// brain client is built ([`SyncConfig::device_token`]), like `brain_ca_file`.
    pub token_file: Option<TokenFile>,
    /// Only from `LIB_WEBHOOK_SECRET`, for the same reason.
    pub webhook_secret: Option<String>,
    pub realtime: Realtime,
    pub push_debounce_ms: u64,
    /// Periodic full push and pull, the fallback for lost wake-ups; at least 1.
    pub interval_secs: u64,
    /// Events per request, 1..=500.
    pub batch_size: usize,
    /// Where the webhook listener binds; `LIB_WEBHOOK_PORT` replaces the port.
    pub listen: SocketAddr,
    /// Where the brain can reach the listener; the agent registers its webhook when set.
    pub public_url: Option<String>,
    /// What the listener accepts as proof that a notification came from the brain.
    pub webhook_auth: WebhookAuth,
}

// Written by hand so that secrets never reach a log line: `{:?}` of a Config is a natural thing
// to trace at startup.
impl fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("SyncConfig")
            .field("brain_url", &self.brain_url)
            .field(
                "brain_ca_file",
                &self.brain_ca_file.as_ref().map(|f| &f.path),
            )
            .field("secret", &redact(&self.secret))
            .field("token", &redact(&self.token))
            .field("token_file", &self.token_file.as_ref().map(|f| &f.path))
            .field("webhook_secret", &redact(&self.webhook_secret))
            .field("realtime", &self.realtime)
            .field("push_debounce_ms", &self.push_debounce_ms)
            .field("interval_secs", &self.interval_secs)
            .field("batch_size", &self.batch_size)
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("webhook_auth", &self.webhook_auth)
            .finish()
    }
}

/// The file `[sync] token_file` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    /// Absolute.
    pub path: PathBuf,
    /// Where it was set: `config /etc/agent.toml: line 4: sync.token_file`.
    pub origin: String,
}

/// Why the device token cannot be used. Display is one line naming the file.
#[derive(Debug, Error)]
#[error("{origin}: device token file {}: {problem}", path.display())]
pub struct TokenFileError {
    pub path: PathBuf,
    pub origin: String,
    pub problem: String,
}

impl SyncConfig {
    /// This device's token: `LIB_DEVICE_TOKEN`, else the content of `[sync] token_file`
    /// (trimmed). The file is refused when its group or others may read or write it: it
    /// lets whoever holds it act as this device.
    pub fn device_token(&self) -> Result<Option<String>, TokenFileError> {
        if let Some(token) = self.token.as_ref().filter(|t| !t.trim().is_empty()) {
            return Ok(Some(token.trim().to_owned()));
        }
        let Some(file) = &self.token_file else {
            return Ok(None);
        };
        let error = |problem: String| TokenFileError {
            path: file.path.clone(),
            origin: file.origin.clone(),
            problem,
        };
        let meta = std::fs::metadata(&file.path).map_err(|e| error(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(error(format!(
                    "its mode is {mode:04o}, readable by others: the token lets anyone holding \
                     it act as this device (chmod 600 {})",
                    file.path.display()
                )));
            }
        }
        if !meta.is_file() {
            return Err(error("not a file".into()));
        }
        let text = std::fs::read_to_string(&file.path).map_err(|e| error(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(error("the file is empty".into()));
        }
        Ok(Some(token.to_owned()))
    }
}

/// What the webhook listener accepts (`[sync] webhook_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAuth {
    /// Only `x-lib-signature`: an HMAC of the body and a timestamp, so a notification seen once
    /// cannot be replayed later.
    Signature,
    /// Also LIB v1.1's `x-webhook-secret`, the webhook secret itself in a header: what LIB
    /// v1.1's edge function sends. Weaker: anyone who sees one request can send more.
    SharedSecret,
}

/// How the agent learns that the brain has new events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realtime {
    /// The brain POSTs to our listener (needs a `public_url` the brain can reach).
    Webhook,
    /// We hold a `GET /pull?wait_ms=` open: works behind NAT.
    Longpoll,
    /// Only the periodic sync.
    Off,
}

impl Realtime {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Realtime::Webhook => "webhook",
            Realtime::Longpoll => "longpoll",
            Realtime::Off => "off",
        }
    }
}

impl fmt::Display for Realtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The flags that reach into the configuration; they beat the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config PATH`: must exist when given.
    pub config_path: Option<PathBuf>,
    /// `--db PATH`: beats `LIB_SQLITE_PATH` and `[store] path`.
    pub db_path: Option<PathBuf>,
}

/// Why the configuration cannot be used. Display is one line naming the place and the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not TOML, or an unknown key (the message names it). `toml`'s own error is not kept as the
    /// source: its Display is a multi-line snippet, which must not reach the user's terminal.
    #[error("config {}: {}{message}", show_file(.file), at_line(.line))]
    Syntax {
        file: Option<PathBuf>,
        line: Option<usize>,
        message: String,
    },
    /// A value of the wrong type, such as a string where a number goes. `key` is where it sits:
    /// `index.max_content_bytes`, `library[0].name`, `library[0].include[1]`.
    #[error("config {}: {}{key}: {message}", show_file(.file), at_line(.line))]
    Type {
        file: Option<PathBuf>,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("config {}: {}{key} is missing", show_file(.file), at_line(.line))]
    Missing {
        file: Option<PathBuf>,
        line: Option<usize>,
        key: String,
    },
    #[error("config {}: {}{key} = {value}: {problem}", show_file(.file), at_line(.line))]
    Invalid {
        file: Option<PathBuf>,
        line: Option<usize>,
        key: String,
        /// As written, quoted when a string.
        value: String,
        problem: String,
    },
    #[error(
        "config {}: {}{key} is not read from a file, to keep it out of backups and shared \
         dotfiles: remove it and set the environment variable {env_var} instead",
        show_file(.file), at_line(.line)
    )]
    SecretInFile {
        file: Option<PathBuf>,
        line: Option<usize>,
        key: &'static str,
        env_var: &'static str,
    },
    #[error("config {}: {}{key}: {source}", show_file(.file), at_line(.line))]
    Glob {
        file: Option<PathBuf>,
        line: Option<usize>,
        key: String,
        // Boxed: globset's error is large, and every Result<_, ConfigError> would carry it.
        #[source]
        source: Box<FilterError>,
    },
    #[error("environment {var}={value:?}: {problem}")]
    Env {
        var: &'static str,
        value: String,
        problem: String,
    },
    #[error("{origin}: cannot expand {path:?}: the home directory is unknown")]
    NoHome { origin: String, path: PathBuf },
    #[error("{origin}: cannot make {path:?} absolute: {source}")]
    Absolute {
        origin: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn show_file(file: &Option<PathBuf>) -> String {
    match file {
        Some(path) => path.display().to_string(),
        None => "<text>".to_owned(),
    }
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// `dirs::config_dir()/lib-agent/agent.toml`, the config file when neither `--config` nor
/// `LIB_AGENT_CONFIG` names one.
pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("lib-agent").join("agent.toml"))
}

/// The process environment, for `main` to hand to [`Config::load`]. Unset and non-UTF-8 values
/// are both `None`.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

impl Config {
    /// Reads the config file (`--config`, else `LIB_AGENT_CONFIG`, else [`default_config_path`],
    /// which may be absent) and layers the environment and the flags over it.
    ///
    /// `env` is injected so tests never touch the process environment (no global mutable state).
    pub fn load(
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        load_with_default(overrides, env, default_config_path())
    }

    /// Builds the configuration from the text of a config file. `source` names the file in errors
    /// and anchors its relative paths (the current directory when `None`).
    pub fn from_toml_str(
        text: &str,
        source: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file = FileCtx {
            text,
            file: source.map(Path::to_path_buf),
        };
        // Through serde_path_to_error so that a value of the wrong type names its key: toml's
        // own error only has the span.
        let raw: RawFile = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| file.syntax(e))?;
        let env = Env(env);

        let store = build_store(&file, raw.store, &env, overrides)?;
        let libraries = build_libraries(&file, raw.library)?;
        let index = build_index(&file, raw.index)?;
        let watch = build_watch(&file, raw.watch)?;
        let sync = build_sync(&file, raw.sync, &env)?;
        let metrics = build_metrics(&file, raw.metrics)?;

        Ok(Config {
            source: file.file,
            store,
            libraries,
            index,
            watch,
            sync,
            metrics,
        })
    }

    /// The library with this name. The name is NFC-normalised first, as the configured ones are.
    pub fn library(&self, name: &str) -> Option<&LibraryConfig> {
        let name: String = name.nfc().collect();
        self.libraries.iter().find(|lib| lib.name == name)
    }
}

/// Where the config file is, and whether it must exist: `--config`, else `LIB_AGENT_CONFIG` (both
/// must exist: a typo in a path the user named must not silently run the agent with the
/// defaults), else `default_path` (which may be absent, or unknown when there is no home).
fn locate(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    default_path: Option<PathBuf>,
) -> Result<(Option<PathBuf>, bool), ConfigError> {
    match (&overrides.config_path, Env(env).get(ENV_CONFIG)) {
        (Some(flag), _) => Ok((
            Some(absolute_from_cwd(flag, || "flag --config".to_owned())?),
            true,
        )),
        (None, Some(value)) => {
            let origin = || format!("environment {ENV_CONFIG}");
            Ok((Some(absolute_from_cwd(Path::new(&value), origin)?), true))
        }
        (None, None) => Ok((default_path, false)),
    }
}

/// The config file `agent` reads ([`Config::load`]'s choice), whether it exists or not: where
/// `agent library add` writes. `None` when no home directory gives a platform path.
pub fn file_path(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>, ConfigError> {
    Ok(locate(overrides, env, default_config_path())?.0)
}

/// [`Config::load`] with the platform default path as a parameter, so tests can point it at a
/// file that is known to be missing instead of the developer's real config.
fn load_with_default(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    default_path: Option<PathBuf>,
) -> Result<Config, ConfigError> {
    let (path, required) = locate(overrides, env, default_path)?;
    let Some(path) = path else {
        return Config::from_toml_str("", None, env, overrides);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Config::from_toml_str(&text, Some(&path), env, overrides),
        // Only the default location may be absent.
        Err(e) if !required && e.kind() == io::ErrorKind::NotFound => {
            Config::from_toml_str("", None, env, overrides)
        }
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written. Every table refuses unknown keys so a typo is an error, not a default
// silently used; values are `Spanned` so validation errors can give the line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    store: Option<RawStore>,
    #[serde(default)]
    library: Vec<Spanned<RawLibrary>>,
    index: Option<RawIndex>,
    watch: Option<RawWatch>,
    sync: Option<RawSync>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLibrary {
    name: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    include: Option<Spanned<Vec<Spanned<String>>>>,
    exclude: Option<Spanned<Vec<Spanned<String>>>>,
    respect_gitignore: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIndex {
    max_content_bytes: Option<Spanned<i64>>,
    hash_threads: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    debounce_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    brain_url: Option<Spanned<String>>,
    brain_ca_file: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    // Accepted by the parser only to be refused with a message that says where the secret goes.
    secret: Option<Spanned<toml::Value>>,
    webhook_secret: Option<Spanned<toml::Value>>,
    realtime: Option<Spanned<String>>,
    push_debounce_ms: Option<Spanned<i64>>,
    interval_secs: Option<Spanned<i64>>,
    batch_size: Option<Spanned<i64>>,
    listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    webhook_auth: Option<Spanned<String>>,
}

/// The file being read: its text (for line numbers) and its path (for errors and relative paths).
struct FileCtx<'a> {
    text: &'a str,
    file: Option<PathBuf>,
}

impl FileCtx<'_> {
    /// The 1-based line of a byte offset; a span past the end (never expected) counts as the end.
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn syntax(&self, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let key = key_path(e.path());
        let e = e.into_inner();
        let line = e.span().map(|span| self.line(&span));
        // One line even if toml's message ever spans several; and say "integer" where serde
        // says "i64", which is our implementation, not the user's vocabulary.
        let mut message = e
            .message()
            .trim()
            .replace('\n', " ")
            .replace("expected i64", "expected an integer");
        // Serde names a table by the struct it fills, which is ours, not the user's, too.
        for raw in [
            "RawFile",
            "RawStore",
            "RawLibrary",
            "RawIndex",
            "RawWatch",
            "RawSync",
        ] {
            message = message.replace(&format!("expected struct {raw}"), "expected a table");
        }
        // The most likely way to get a table where the list of libraries goes.
        let at_line = line
            .and_then(|l| self.text.lines().nth(l - 1))
            .map(str::trim);
        if message.contains("expected a sequence") && at_line == Some("[library]") {
            message.push_str(": write [[library]], with two brackets, for each library");
        }
        // Not TOML has no key; an unknown key is named by the message already ("unknown field
        // `nmae`, expected one of ..."), and its line says which table it is in.
        if key.is_empty() || message.starts_with("unknown field") {
            ConfigError::Syntax {
                file: self.file.clone(),
                line,
                message,
            }
        } else {
            ConfigError::Type {
                file: self.file.clone(),
                line,
                key: key.replace(['\n', '\r'], " "),
                message,
            }
        }
    }

    fn invalid(
        &self,
        span: &Range<usize>,
        key: &str,
        value: impl fmt::Debug,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: Some(self.line(span)),
            key: key.to_owned(),
            value: format!("{value:?}"),
            problem: problem.into(),
        }
    }

    fn missing(&self, span: &Range<usize>, key: &str) -> ConfigError {
        ConfigError::Missing {
            file: self.file.clone(),
            line: Some(self.line(span)),
            key: key.to_owned(),
        }
    }

    fn origin(&self, span: &Range<usize>, key: &str) -> String {
        format!(
            "config {}: line {}: {key}",
            show_file(&self.file),
            self.line(span)
        )
    }

    /// An integer in `min..=max`, converted to the type the rest of the agent uses.
    fn int<T: TryFrom<i64>>(
        &self,
        value: &Spanned<i64>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Result<T, ConfigError> {
        let v = *value.get_ref();
        if v < min || v > max {
            let problem = if max == i64::MAX {
                format!("must be at least {min}")
            } else {
                format!("must be between {min} and {max}")
            };
            return Err(self.invalid(&value.span(), key, v, problem));
        }
        T::try_from(v).map_err(|_| self.invalid(&value.span(), key, v, "is too large"))
    }

    /// A path from the file: `~` is the home directory, a relative path is relative to the
    /// directory of the config file, so the file means the same whatever the current directory.
    fn path(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let span = value.span();
        if value.get_ref().is_empty() {
            return Err(self.invalid(&span, key, "", "is empty"));
        }
        let origin = || self.origin(&span, key);
        let path = expand_tilde(Path::new(value.get_ref()), origin)?;
        let joined = if path.is_absolute() {
            path
        } else {
            let dir = self
                .file
                .as_deref()
                .and_then(Path::parent)
                .filter(|dir| !dir.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            dir.join(path)
        };
        make_absolute(joined, origin)
    }

    /// An optional http(s) URL; the empty string means unset.
    fn url(&self, value: &Spanned<String>, key: &str) -> Result<Option<String>, ConfigError> {
        check_url(value.get_ref())
            .map_err(|problem| self.invalid(&value.span(), key, value.get_ref(), problem))
    }

    fn refuse_secret(
        &self,
        value: &Option<Spanned<toml::Value>>,
        key: &'static str,
        env_var: &'static str,
    ) -> Result<(), ConfigError> {
        match value {
            None => Ok(()),
            Some(value) => Err(ConfigError::SecretInFile {
                file: self.file.clone(),
                line: Some(self.line(&value.span())),
                key,
                env_var,
            }),
        }
    }
}

/// The key that serde_path_to_error tracked down to a failing value, written as the user would:
/// `index.max_content_bytes`, `library[0].name`. Empty at the top level (a TOML syntax error).
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path {
        let name = match segment {
            Segment::Seq { index } => {
                key.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key: name } | Segment::Enum { variant: name } => name.as_str(),
            Segment::Unknown => "?",
        };
        // `toml::Spanned` deserializes as a struct of private fields (`$__serde_spanned_private_
        // value` and the like): an implementation detail, not a key of the file.
        if name.starts_with("$__") {
            continue;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(name);
    }
    key
}

/// The injected environment. A variable set to the empty (or all-blank) string counts as unset,
/// as it does for most tools: `export LIB_BRAIN_URL=` is how people unset things in `.env` files.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn error(var: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Env {
            var,
            value: value.to_owned(),
            problem: problem.into(),
        }
    }

    fn url(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(value) => {
                check_url(value.trim()).map_err(|problem| Env::error(var, &value, problem))
            }
        }
    }
}

fn build_store(
    file: &FileCtx<'_>,
    raw: Option<RawStore>,
    env: &Env<'_>,
    overrides: &Overrides,
) -> Result<StoreConfig, ConfigError> {
    // The file's value is checked even when a flag overrides it: a broken file should not work
    // on one invocation and fail on the next.
    let from_file = match raw.and_then(|s| s.path) {
        Some(path) => Some(file.path(&path, "store.path")?),
        None => None,
    };
    let path = if let Some(flag) = &overrides.db_path {
        absolute_from_cwd(flag, || "flag --db".to_owned())?
    } else if let Some(value) = env.get(ENV_SQLITE_PATH) {
        absolute_from_cwd(Path::new(&value), || {
            format!("environment {ENV_SQLITE_PATH}")
        })?
    } else if let Some(path) = from_file {
        path
    } else {
        default_store_path()?
    };
    Ok(StoreConfig { path })
}

fn default_store_path() -> Result<PathBuf, ConfigError> {
    match dirs::data_dir() {
        Some(dir) => Ok(dir.join("lib-agent").join("agent.db")),
        None => make_absolute(PathBuf::from(".lib/agent.db"), || {
            "default store path".to_owned()
        }),
    }
}

fn build_libraries(
    file: &FileCtx<'_>,
    raw: Vec<Spanned<RawLibrary>>,
) -> Result<Vec<LibraryConfig>, ConfigError> {
    let mut libraries: Vec<LibraryConfig> = Vec::with_capacity(raw.len());
    // (name, index, span) of each library so far, to name the first one in a duplicate error.
    let mut seen: Vec<(String, usize, Range<usize>)> = Vec::with_capacity(raw.len());
    for (i, spanned) in raw.into_iter().enumerate() {
        let table_span = spanned.span();
        let lib = spanned.into_inner();

        let name_key = format!("library[{i}].name");
        let name = lib
            .name
            .as_ref()
            .ok_or_else(|| file.missing(&table_span, &name_key))?;
        let name_span = name.span();
        let normalised: String = name.get_ref().nfc().collect();
        if let Err(problem) = check_library_name(&normalised) {
            return Err(file.invalid(&name_span, &name_key, name.get_ref(), problem));
        }
        if let Some((_, j, first)) = seen.iter().find(|(n, _, _)| *n == normalised) {
            let problem = format!(
                "is used twice (also library[{j}], line {})",
                file.line(first)
            );
            return Err(file.invalid(&name_span, &name_key, name.get_ref(), problem));
        }
        seen.push((normalised.clone(), i, name_span));

        let path_key = format!("library[{i}].path");
        let path = lib
            .path
            .as_ref()
            .ok_or_else(|| file.missing(&table_span, &path_key))?;
        let path = file.path(path, &path_key)?;

        let include_key = format!("library[{i}].include");
        let include = globs(lib.include.as_ref(), DEFAULT_INCLUDE);
        if let Some(list) = &lib.include {
            if list.get_ref().is_empty() {
                // An empty include list would make a library that can never hold a file, which
                // is surely not what was meant; the default is one key-removal away.
                return Err(file.invalid(
                    &list.span(),
                    &include_key,
                    Vec::<String>::new(),
                    "includes nothing; remove the key to include every file",
                ));
            }
        }
        // Absent means the defaults; an explicit `exclude = []` means exclude nothing.
        let exclude_key = format!("library[{i}].exclude");
        let exclude = globs(lib.exclude.as_ref(), DEFAULT_EXCLUDE);

        let filter = match LibraryFilter::from_globs(&normalised, &include, &exclude) {
            Ok(filter) => filter,
            Err(source) => {
                // Point at the glob that failed: look for it in the list it came from.
                let find = |list: &Option<Spanned<Vec<Spanned<String>>>>| {
                    list.as_ref().and_then(|l| {
                        l.get_ref()
                            .iter()
                            .find(|g| g.get_ref() == source.glob())
                            .map(|g| g.span())
                    })
                };
                let (key, span) = match (find(&lib.include), find(&lib.exclude)) {
                    (Some(span), _) => (include_key, Some(span)),
                    (None, Some(span)) => (exclude_key, Some(span)),
                    (None, None) => (format!("library[{i}]"), Some(table_span)),
                };
                return Err(ConfigError::Glob {
                    file: file.file.clone(),
                    line: span.map(|s| file.line(&s)),
                    key,
                    source: Box::new(source),
                });
            }
        };

        libraries.push(LibraryConfig {
            name: normalised,
            path,
            include,
            exclude,
            filter,
            respect_gitignore: lib.respect_gitignore.unwrap_or(false),
        });
    }
    Ok(libraries)
}

fn globs(list: Option<&Spanned<Vec<Spanned<String>>>>, default: &[&str]) -> Vec<String> {
    match list {
        Some(list) => list.get_ref().iter().map(|g| g.get_ref().clone()).collect(),
        None => default.iter().map(|g| (*g).to_owned()).collect(),
    }
}

/// A library name is the first segment of every entity key of the library (DESIGN.md, entities
/// and keys), so it must be a valid, non-special path segment.
fn check_library_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains(['/', '\\']) {
        Err("contains a '/' or '\\': it becomes the first segment of every entity key")
    } else if name == "." || name == ".." {
        Err("is not a usable key segment")
    } else if name.chars().any(char::is_control) {
        Err("contains a control character")
    } else if name.len() > MAX_LIBRARY_NAME_BYTES {
        Err("is longer than 255 bytes")
    } else {
        Ok(())
    }
}

fn build_index(file: &FileCtx<'_>, raw: Option<RawIndex>) -> Result<IndexConfig, ConfigError> {
    let mut index = IndexConfig {
        max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
        hash_threads: 0,
    };
    let Some(raw) = raw else { return Ok(index) };
    if let Some(v) = &raw.max_content_bytes {
        index.max_content_bytes = file.int(v, "index.max_content_bytes", 1, i64::MAX)?;
    }
    if let Some(v) = &raw.hash_threads {
        // More threads than this is a typo, and spawning them would be the first symptom.
        index.hash_threads = file.int(v, "index.hash_threads", 0, 1024)?;
    }
    Ok(index)
}

fn build_watch(file: &FileCtx<'_>, raw: Option<RawWatch>) -> Result<WatchConfig, ConfigError> {
    let mut watch = WatchConfig {
        debounce_ms: DEFAULT_WATCH_DEBOUNCE_MS,
    };
    if let Some(v) = raw.and_then(|w| w.debounce_ms) {
        watch.debounce_ms = file.int(&v, "watch.debounce_ms", 0, i64::MAX)?;
    }
    Ok(watch)
}

fn build_metrics(
    file: &FileCtx<'_>,
    raw: Option<RawMetrics>,
) -> Result<MetricsConfig, ConfigError> {
    let mut metrics = MetricsConfig::default();
    // The empty string means off, as for the URLs.
    let Some(v) = raw
        .and_then(|m| m.listen)
        .filter(|v| !v.get_ref().is_empty())
    else {
        return Ok(metrics);
    };
    let addr: SocketAddr = v.get_ref().parse().map_err(|_| {
        let problem = "not an IP address and port like \"127.0.0.1:9464\" (no host names)";
        file.invalid(&v.span(), "metrics.listen", v.get_ref(), problem)
    })?;
    if !addr.ip().is_loopback() {
        let problem = "not a loopback address: /metrics takes no credential, so it is served on \
                       127.0.0.1 or ::1 only (scrape it through an SSH tunnel or a local proxy)";
        return Err(file.invalid(&v.span(), "metrics.listen", v.get_ref(), problem));
    }
    metrics.listen = Some(addr);
    Ok(metrics)
}

fn build_sync(
    file: &FileCtx<'_>,
    raw: Option<RawSync>,
    env: &Env<'_>,
) -> Result<SyncConfig, ConfigError> {
    let mut sync = SyncConfig {
        brain_url: None,
        brain_ca_file: None,
        secret: None,
        token: None,
        token_file: None,
        webhook_secret: None,
        realtime: Realtime::Longpoll,
        push_debounce_ms: DEFAULT_PUSH_DEBOUNCE_MS,
        interval_secs: DEFAULT_INTERVAL_SECS,
        batch_size: DEFAULT_BATCH_SIZE,
        listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
        public_url: None,
        webhook_auth: WebhookAuth::Signature,
    };

    if let Some(raw) = raw {
        file.refuse_secret(&raw.secret, "sync.secret", ENV_SYNC_SECRET)?;
        file.refuse_secret(
            &raw.webhook_secret,
            "sync.webhook_secret",
            ENV_WEBHOOK_SECRET,
        )?;
        if let Some(v) = &raw.brain_url {
            sync.brain_url = file.url(v, "sync.brain_url")?;
        }
        // The empty string means unset, as for the URLs beside it.
        if let Some(v) = raw
            .brain_ca_file
            .as_ref()
            .filter(|v| !v.get_ref().is_empty())
        {
            sync.brain_ca_file = Some(CaFile {
                path: file.path(v, "sync.brain_ca_file")?,
                origin: file.origin(&v.span(), "sync.brain_ca_file"),
            });
        }
        if let Some(v) = raw.token_file.as_ref().filter(|v| !v.get_ref().is_empty()) {
            sync.token_file = Some(TokenFile {
                path: file.path(v, "sync.token_file")?,
                origin: file.origin(&v.span(), "sync.token_file"),
            });
        }
        if let Some(v) = &raw.realtime {
            sync.realtime = match v.get_ref().as_str() {
                "webhook" => Realtime::Webhook,
                "longpoll" => Realtime::Longpoll,
                "off" => Realtime::Off,
                other => {
                    let problem = "expected one of \"webhook\", \"longpoll\", \"off\"";
                    return Err(file.invalid(&v.span(), "sync.realtime", other, problem));
                }
            };
        }
        if let Some(v) = &raw.push_debounce_ms {
            sync.push_debounce_ms = file.int(v, "sync.push_debounce_ms", 0, i64::MAX)?;
        }
        if let Some(v) = &raw.interval_secs {
            sync.interval_secs = file.int(v, "sync.interval_secs", 1, i64::MAX)?;
        }
        if let Some(v) = &raw.batch_size {
            sync.batch_size = file.int(v, "sync.batch_size", 1, MAX_BATCH_SIZE as i64)?;
        }
        if let Some(v) = &raw.listen {
            sync.listen = v.get_ref().parse().map_err(|_| {
                let problem = "not an IP address and port like \"127.0.0.1:8001\" (no host names)";
                file.invalid(&v.span(), "sync.listen", v.get_ref(), problem)
            })?;
        }
        if let Some(v) = &raw.public_url {
            sync.public_url = file.url(v, "sync.public_url")?;
        }
        if let Some(v) = &raw.webhook_auth {
            sync.webhook_auth = match v.get_ref().as_str() {
                "signature" => WebhookAuth::Signature,
                "shared-secret" => WebhookAuth::SharedSecret,
                other => {
                    let problem = "expected \"signature\" or \"shared-secret\"";
                    return Err(file.invalid(&v.span(), "sync.webhook_auth", other, problem));
                }
            };
        }
    }

    // The environment, over the file. LIB_BRAIN_URL is the new name and wins over the LIB v1.1
    // one; both are checked so a broken value is reported even when the other one wins.
    let supabase = env.url(ENV_SUPABASE_FN_URL)?;
    if let Some(url) = env.url(ENV_BRAIN_URL)?.or(supabase) {
        sync.brain_url = Some(url);
    }
    if let Some(value) = env.get(ENV_BRAIN_CA_FILE) {
        let origin = format!("environment {ENV_BRAIN_CA_FILE}");
        sync.brain_ca_file = Some(CaFile {
            path: absolute_from_cwd(Path::new(&value), || origin.clone())?,
            origin,
        });
    }
    if let Some(secret) = env.get(ENV_SYNC_SECRET) {
        sync.secret = Some(secret);
    }
    if let Some(token) = env.get(ENV_DEVICE_TOKEN).filter(|t| !t.trim().is_empty()) {
        sync.token = Some(token);
    }
    if let Some(secret) = env.get(ENV_WEBHOOK_SECRET) {
        sync.webhook_secret = Some(secret);
    }
    if let Some(value) = env.get(ENV_WEBHOOK_PORT) {
        let port: u16 = value
            .trim()
            .parse()
            .map_err(|_| Env::error(ENV_WEBHOOK_PORT, &value, "not a port number (0 to 65535)"))?;
        sync.listen.set_port(port);
    }
    if let Some(value) = env.get(ENV_SYNC_BATCH_SIZE) {
        let n: usize = value
            .trim()
            .parse()
            .map_err(|_| Env::error(ENV_SYNC_BATCH_SIZE, &value, "not a number"))?;
        if !(1..=MAX_BATCH_SIZE).contains(&n) {
            let problem = format!("must be between 1 and {MAX_BATCH_SIZE}");
            return Err(Env::error(ENV_SYNC_BATCH_SIZE, &value, problem));
        }
        sync.batch_size = n;
    }
    Ok(sync)
}

/// `Ok(None)` for the empty string, the URL without trailing `/` for an http(s) URL with a host.
/// Trailing slashes go so that clients can append `/ingest` without doubling them.
fn check_url(url: &str) -> Result<Option<String>, &'static str> {
    if url.is_empty() {
        return Ok(None);
    }
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        url.get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &url[scheme.len()..])
    });
    let Some(rest) = rest else {
        return Err("must start with http:// or https://");
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains a space or control character");
    }
    Ok(Some(url.trim_end_matches('/').to_owned()))
}

/// `~` and `~/...` become the home directory; `~user` is left alone (we do not look up users).
fn expand_tilde(path: &Path, origin: impl Fn() -> String) -> Result<PathBuf, ConfigError> {
    let mut components = path.components();
    if components.next() != Some(Component::Normal("~".as_ref())) {
        return Ok(path.to_path_buf());
    }
    match dirs::home_dir() {
        Some(home) => Ok(home.join(components.as_path())),
        None => Err(ConfigError::NoHome {
            origin: origin(),
            path: path.to_path_buf(),
        }),
    }
}

/// A path from the environment or a flag: `~` expanded, relative to the current directory.
fn absolute_from_cwd(path: &Path, origin: impl Fn() -> String) -> Result<PathBuf, ConfigError> {
    let expanded = expand_tilde(path, &origin)?;
    make_absolute(expanded, origin)
}

/// Absolute without touching the disk: the folder may not exist yet, and symlinks are the
/// user's business (no canonicalize).
fn make_absolute(path: PathBuf, origin: impl Fn() -> String) -> Result<PathBuf, ConfigError> {
    std::path::absolute(&path).map_err(|source| ConfigError::Absolute {
        origin: origin(),
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            Some(Path::new("/etc/lib-agent/agent.toml")),
            &no_env,
            &Overrides::default(),
        )
    }

    #[test]
    fn example_file_parses_and_states_the_true_defaults() {
        let example = parse(include_str!("../config/agent.example.toml"))
            .unwrap_or_else(|e| panic!("example config: {e}"));
        let defaults = parse("").expect("empty config");

        let notes = example
            .library("notes")
            .expect("the example has a notes library");
        assert_eq!(notes.path, dirs::home_dir().expect("home").join("notes"));
        assert_eq!(notes.include, DEFAULT_INCLUDE);
        assert_eq!(notes.exclude, DEFAULT_EXCLUDE);
        assert!(
            !notes.respect_gitignore,
            "off by default, as the example says"
        );
        let with = parse("[[library]]\nname = \"a\"\npath = \"/a\"\nrespect_gitignore = true\n")
            .expect("respect_gitignore");
        assert!(with.libraries[0].respect_gitignore);

        // The example says "default: ..." next to every key; hold it to that.
        assert_eq!(
            example.index.max_content_bytes,
            defaults.index.max_content_bytes
        );
        assert_eq!(example.index.hash_threads, defaults.index.hash_threads);
        assert_eq!(example.watch.debounce_ms, defaults.watch.debounce_ms);
        let (e, d) = (&example.sync, &defaults.sync);
        assert_eq!(e.brain_url, d.brain_url);
        assert_eq!(e.brain_ca_file, d.brain_ca_file);
        assert_eq!(e.token_file, d.token_file);
        assert_eq!(e.realtime, d.realtime);
        assert_eq!(e.push_debounce_ms, d.push_debounce_ms);
        assert_eq!(e.interval_secs, d.interval_secs);
        assert_eq!(e.batch_size, d.batch_size);
        assert_eq!(e.listen, d.listen);
        assert_eq!(e.public_url, d.public_url);
        assert_eq!(d.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(example.metrics.listen, defaults.metrics.listen);
        assert_eq!(defaults.metrics.listen, None, "off by default");
    }

    #[test]
    fn metrics_listen_is_a_loopback_address_or_a_clear_error() {
        let ok = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").expect("loopback");
        assert_eq!(
            ok.metrics.listen,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        let ok = parse("[metrics]\nlisten = \"[::1]:0\"\n").expect("loopback v6");
        assert!(ok.metrics.listen.is_some());
        assert_eq!(
            parse("[metrics]\nlisten = \"\"\n")
                .expect("off")
                .metrics
                .listen,
            None
        );
        for (value, problem) in [
            ("localhost:9464", "not an IP address and port"),
            ("127.0.0.1", "not an IP address and port"),
            ("0.0.0.0:9464", "not a loopback address"),
            ("192.168.1.5:9464", "not a loopback address"),
        ] {
            let e = parse(&format!("\n[metrics]\nlisten = {value:?}\n"))
                .expect_err(value)
                .to_string();
            assert!(
                e.contains("metrics.listen") && e.contains("line 3") && e.contains(problem),
                "{value}: {e}"
            );
        }
    }

    #[test]
    fn missing_default_config_file_means_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = load_with_default(
            &Overrides::default(),
            &no_env,
            Some(dir.path().join("absent.toml")),
        )
        .expect("defaults");
        assert_eq!(config.source, None);
        assert!(config.libraries.is_empty());
    }

    #[test]
    fn unreadable_default_config_file_is_an_error() {
        // A directory where the file should be: present but not readable as a file.
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load_with_default(&Overrides::default(), &no_env, Some(dir.path().into()))
            .expect_err("a directory is not a config file");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn line_numbers_count_from_one() {
        let ctx = FileCtx {
            text: "a\nb\nc",
            file: None,
        };
        assert_eq!(ctx.line(&(0..1)), 1);
        assert_eq!(ctx.line(&(2..3)), 2);
        assert_eq!(ctx.line(&(4..5)), 3);
        assert_eq!(ctx.line(&(99..100)), 3);
    }

    #[test]
    fn urls() {
        assert_eq!(check_url(""), Ok(None));
        assert_eq!(
            check_url("https://x.io/fn/"),
            Ok(Some("https://x.io/fn".into()))
        );
        assert_eq!(check_url("HTTP://x"), Ok(Some("HTTP://x".into())));
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("http:///path").is_err());
        assert!(check_url("http://a b").is_err());
        assert!(check_url("h").is_err());
    }

    #[test]
    fn library_names() {
        assert!(check_library_name("notes").is_ok());
        assert!(check_library_name("my notes ✓").is_ok());
        for bad in ["", "a/b", "a\\b", ".", "..", "a\tb", &"x".repeat(256)] {
            assert!(check_library_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_library_name(&"x".repeat(255)).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn the_device_token_comes_from_the_environment_or_a_file_only_its_owner_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  tok-from-file\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let text = format!("[sync]\ntoken_file = {:?}\n", file.display().to_string());
        let config = |env: &dyn Fn(&str) -> Option<String>| {
            Config::from_toml_str(
                &text,
                Some(Path::new("/etc/agent.toml")),
                env,
                &Overrides::default(),
            )
            .expect("config")
        };
        let from_file = config(&no_env);
        assert_eq!(
            from_file.sync.token_file.as_ref().map(|f| &f.path),
            Some(&file)
        );
        assert_eq!(
            from_file.sync.device_token().expect("token").as_deref(),
            Some("tok-from-file")
        );
        let shown = format!("{:?}", from_file.sync);
        assert!(!shown.contains("tok-from-file"), "{shown}");

        let env = |k: &str| (k == ENV_DEVICE_TOKEN).then(|| "tok-from-env".to_owned());
        let from_env = config(&env);
        assert_eq!(
            from_env.sync.device_token().expect("token").as_deref(),
            Some("tok-from-env")
        );
        assert!(!format!("{from_env:?}").contains("tok-from-env"));

        for mode in [0o640, 0o604, 0o660, 0o700 | 0o007] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = from_file.sync.device_token().expect_err("refused");
            let text = err.to_string();
            assert!(text.contains(&file.display().to_string()), "{text}");
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
            assert!(text.contains("sync.token_file"), "{text}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&file, " \n").expect("write");
        assert!(from_file.sync.device_token().is_err(), "an empty file");
        std::fs::remove_file(&file).expect("rm");
        assert!(from_file.sync.device_token().is_err(), "a missing file");
        assert_eq!(
            parse("")
                .expect("config")
                .sync
                .device_token()
                .expect("none"),
            None
        );
    }
}
