//! The schema holding the brain's tables: `lib_shared` (as deployed to Supabase), or another
//! one of the operator's (or each test's) choosing. The SQL is written for `lib_shared`.

use std::borrow::Cow;

pub const DEFAULT_SCHEMA: &str = "lib_shared";

/// Whether a schema name can go into SQL as it is: a plain lowercase identifier.
pub(super) fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 48
}

/// SQL written for `lib_shared`, for `schema`.
pub(super) fn in_schema<'a>(sql: &'a str, schema: &str) -> Cow<'a, str> {
    if schema == DEFAULT_SCHEMA {
        Cow::Borrowed(sql)
    } else {
        Cow::Owned(sql.replace(DEFAULT_SCHEMA, schema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("lib_shared"));
        assert!(valid_schema("lib_shared_t01"));
        assert!(!valid_schema("Lib"));
        assert!(!valid_schema("x;drop"));
        assert!(!valid_schema(""));
    }
}
