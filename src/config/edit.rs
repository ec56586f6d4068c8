//! The config file edited in place (`agent library add` and `remove`): its comments, order and
//! formatting stay as the user wrote them, and only the `[[library]]` tables change.
//!
//! An edit is checked before it is written: the new text must load as a whole ([`ConfigFile::save`]
//! takes the loader), so a command can never leave a file that the next `agent run` refuses. It
//! is written to a new file in the same folder and renamed over the old one, with the old file's
//! permissions: a crash leaves the old file or the new one, never half of one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};
use unicode_normalization::UnicodeNormalization;

/// What a new config file starts with.
const HEADER: &str = "\
# lib-agent configuration, written by `agent library add`; edit it freely (comments are kept).
# Every key is documented in config/agent.example.toml.
";

#[derive(Debug, Error)]
pub enum EditError {
    #[error("config {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("config {path}: cannot write it: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A config file's text as a document that keeps its formatting.
pub struct ConfigFile {
    path: PathBuf,
    doc: DocumentMut,
    /// False for a file that does not exist yet: [`ConfigFile::save`] creates it and its folder.
    exists: bool,
}

impl ConfigFile {
    /// Reads `path`; a file that does not exist is an empty document, to be created on save.
    pub fn open(path: &Path) -> Result<ConfigFile, EditError> {
        let (text, exists) = match std::fs::read_to_string(path) {
            Ok(text) => (text, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HEADER.to_owned(), false),
            Err(source) => {
                return Err(EditError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let doc = text
            .parse::<DocumentMut>()
            .map_err(|e| EditError::Invalid {
                path: path.to_owned(),
                problem: e.to_string(),
            })?;
        Ok(ConfigFile {
            path: path.to_owned(),
            doc,
            exists,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.exists
    }

    /// Appends a library; `include` and `exclude` are written only when given, so a library
    /// that sets neither keeps following the defaults.
    pub fn add_library(
        &mut self,
        name: &str,
        root: &str,
        include: &[String],
        exclude: &[String],
    ) -> Result<(), EditError> {
        let globs = |list: &[String]| Array::from_iter(list.iter().map(String::as_str));
        let mut table = Table::new();
        table.insert("name", value(name));
        table.insert("path", value(root));
        if !include.is_empty() {
            table.insert("include", value(globs(include)));
        }
        if !exclude.is_empty() {
            table.insert("exclude", value(globs(exclude)));
        }
        match self.doc.as_table_mut().get_mut("library") {
            None => {
                // Comments after the last key (all of a file of comments only) stay above the
                // new table, where they were read, rather than sink below it.
                let trailing = self.doc.trailing().as_str().unwrap_or_default().to_owned();
                if !trailing.trim().is_empty() {
                    table.decor_mut().set_prefix(trailing);
                    self.doc.set_trailing("");
                }
                let mut tables = ArrayOfTables::new();
                tables.push(table);
                self.doc.insert("library", Item::ArrayOfTables(tables));
            }
            Some(Item::ArrayOfTables(tables)) => tables.push(table),
            // `library = [{ name = ..., path = ... }]`, the inline spelling, kept as it is.
            Some(Item::Value(Value::Array(array))) => {
                let mut inline: InlineTable = table.into_inline_table();
                inline.fmt();
                array.push(inline);
            }
            Some(_) => return Err(self.not_a_list()),
        }
        Ok(())
    }

    /// Removes the library whose `name` is `name` (both NFC-normalised); false when there is none.
    pub fn remove_library(&mut self, name: &str) -> Result<bool, EditError> {
        let name: String = name.nfc().collect();
        let named = |n: Option<&str>| n.is_some_and(|n| n.nfc().eq(name.chars()));
        match self.doc.as_table_mut().get_mut("library") {
            None => Ok(false),
            Some(Item::ArrayOfTables(tables)) => {
                let Some(i) = tables
                    .iter()
                    .position(|t| named(t.get("name").and_then(Item::as_str)))
                else {
                    return Ok(false);
                };
                tables.remove(i);
                if tables.is_empty() {
                    self.doc.remove("library");
                }
                Ok(true)
            }
            Some(Item::Value(Value::Array(array))) => {
                let Some(i) = array.iter().position(|v| {
                    named(
                        v.as_inline_table()
                            .and_then(|t| t.get("name"))
                            .and_then(Value::as_str),
                    )
                }) else {
                    return Ok(false);
                };
                array.remove(i);
                Ok(true)
            }
            Some(_) => Err(self.not_a_list()),
        }
    }

    /// The document as it would be written.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// Writes the document, once `check` accepts its text (the config loader: the file must
    /// load as a whole). Creates the file's folder when it is new.
    pub fn save(&self, check: impl FnOnce(&str) -> Result<(), String>) -> Result<(), EditError> {
        let text = self.text();
        check(&text).map_err(|problem| EditError::Invalid {
            path: self.path.clone(),
            problem: format!("the edit would not load, so nothing was written: {problem}"),
        })?;
        // Keep the mode the user gave the file (it may be 0600); a new one is 0644.
        let mode = if self.exists {
            std::fs::metadata(&self.path)
                .map(|m| m.permissions().mode() & 0o7777)
                .map_err(|source| EditError::Write {
                    path: self.path.clone(),
                    source,
                })?
        } else {
            0o644
        };
        crate::private::replace_file(&self.path, text.as_bytes(), mode).map_err(|source| {
            EditError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }

    fn not_a_list(&self) -> EditError {
        EditError::Invalid {
            path: self.path.clone(),
            problem: "`library` is neither [[library]] tables nor a list of tables".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(text: &str, edit: impl FnOnce(&mut ConfigFile)) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write");
        let mut file = ConfigFile::open(&path).expect("open");
        edit(&mut file);
        file.text()
    }

    #[test]
    fn adding_a_library_keeps_every_comment_and_the_order_of_the_file() {
        let before = "# my setup\n[store]\npath = \"/x.db\" # here\n\n[[library]]\n# the notes\nname = \"notes\"\npath = \"/n\"\n\n[sync]\nbrain_url = \"http://b\"\n";
        let after = edited(before, |f| {
            f.add_library("papers", "/p", &["**/*.pdf".into()], &[])
                .expect("add")
        });
        assert!(
            after.starts_with(
                "# my setup\n[store]\npath = \"/x.db\" # here\n\n[[library]]\n# the notes\nname = \"notes\"\npath = \"/n\"\n"
            ),
            "{after}"
        );
        assert!(
            after.contains("[sync]\nbrain_url = \"http://b\"\n"),
            "{after}"
        );
        assert!(
            after.contains(
                "[[library]]\nname = \"papers\"\npath = \"/p\"\ninclude = [\"**/*.pdf\"]\n"
            ),
            "{after}"
        );
        assert!(
            !after.contains("exclude"),
            "not given, not written: {after}"
        );
    }

    #[test]
    fn comments_at_the_end_of_a_file_stay_above_the_new_library() {
        let after = edited("# mine\n# and more\n", |f| {
            f.add_library("a", "/a", &[], &[]).expect("add")
        });
        assert_eq!(
            after,
            "# mine\n# and more\n[[library]]\nname = \"a\"\npath = \"/a\"\n"
        );
    }

    #[test]
    fn removing_a_library_leaves_the_others_and_their_comments() {
        let before = "[[library]]\n# keep me\nname = \"a\"\npath = \"/a\"\n\n[[library]]\nname = \"b\"\npath = \"/b\"\n";
        let after = edited(before, |f| assert!(f.remove_library("b").expect("remove")));
        assert_eq!(
            after,
            "[[library]]\n# keep me\nname = \"a\"\npath = \"/a\"\n"
        );
        let unchanged = edited(before, |f| assert!(!f.remove_library("c").expect("remove")));
        assert_eq!(unchanged, before);
    }

    #[test]
    fn the_inline_spelling_is_edited_in_its_own_spelling() {
        let before = "library = [{ name = \"a\", path = \"/a\" }]\n";
        let after = edited(before, |f| f.add_library("b", "/b", &[], &[]).expect("add"));
        let doc: toml::Value = toml::from_str(&after).expect("still TOML");
        assert_eq!(doc["library"][1]["name"].as_str(), Some("b"), "{after}");
        let after = edited(&after, |f| assert!(f.remove_library("a").expect("remove")));
        let doc: toml::Value = toml::from_str(&after).expect("still TOML");
        assert_eq!(doc["library"].as_array().map(Vec::len), Some(1), "{after}");
    }

    #[test]
    fn a_file_that_does_not_exist_is_created_with_its_folder_and_a_header() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("lib-agent").join("agent.toml");
        let mut file = ConfigFile::open(&path).expect("open");
        assert!(!file.exists());
        file.add_library("notes", "/n", &[], &[]).expect("add");
        file.save(|_| Ok(())).expect("save");
        let text = std::fs::read_to_string(&path).expect("written");
        assert!(text.starts_with("# lib-agent configuration"), "{text}");
        assert!(text.contains("name = \"notes\""), "{text}");
    }

    #[test]
    fn an_edit_the_loader_refuses_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "# mine\n").expect("write");
        let mut file = ConfigFile::open(&path).expect("open");
        file.add_library("notes", "/n", &[], &[]).expect("add");
        let err = file
            .save(|_| Err("library[0].path: nope".into()))
            .expect_err("refused");
        assert!(err.to_string().contains("nothing was written"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "# mine\n");
        let entries = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(entries, 1, "no temporary file left behind");
    }

    #[test]
    fn the_file_keeps_its_permissions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut file = ConfigFile::open(&path).expect("open");
        file.add_library("notes", "/n", &[], &[]).expect("add");
        file.save(|_| Ok(())).expect("save");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_file_that_is_not_toml_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[[library]\n").expect("write");
        let err = ConfigFile::open(&path).err().expect("refused");
        assert!(err.to_string().contains("agent.toml"), "{err}");
    }
}
