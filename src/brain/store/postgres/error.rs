//! PostgreSQL errors as the brain's: what failed, the server's own words, and whether a retry
//! may succeed (503) or not (500).

use crate::brain::BrainError;

/// A failed statement as a [`BrainError`]: [`BrainError::Unavailable`] when the connection or
/// the server is the cause (a retry later may succeed: connection loss, too many connections,
/// shutdown, a serialisation failure or a deadlock), else [`BrainError::Internal`].
pub(super) fn pg_err(context: &str, e: tokio_postgres::Error) -> BrainError {
    let message = format!("{context}: {}", describe(&e));
    let unavailable = e.is_closed()
        || e.code().is_none_or(|c| {
            let code = c.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
        });
    if unavailable {
        BrainError::Unavailable(message)
    } else {
        BrainError::Internal(message)
    }
}

/// The server's message when there is one (tokio-postgres's Display says only "db error").
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}
