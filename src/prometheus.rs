//! The Prometheus text format (0.0.4), written in one place for both `/metrics`: the brain's
//! (`brain/metrics.rs`) and the running agent's (`daemon/metrics.rs`). A family is its `# HELP`
//! and `# TYPE` lines, then its samples; label values and help texts are escaped here, so a
//! device or library name with a quote or a newline cannot forge a line.

use std::fmt::{Display, Write as _};

/// The `content-type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A family's type, as its `# TYPE` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A scrape's text, family by family.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Starts the family `name`: its help and type lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Text {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        self
    }

    /// One sample of the family started last (`name` may carry a suffix: `_bucket`, `_sum`).
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Text {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) -> &mut Text {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_has_its_help_and_type_then_samples_with_escaped_labels() {
        let mut text = Text::new();
        text.family("lib_x_total", Kind::Counter, "Things\ncounted")
            .sample("lib_x_total", &[("library", "a\"b\\c\nd")], 3)
            .single("lib_y", Kind::Gauge, "A gauge", 1.5);
        assert_eq!(
            text.finish(),
            "# HELP lib_x_total Things\\ncounted\n# TYPE lib_x_total counter\n\
             lib_x_total{library=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP lib_y A gauge\n# TYPE lib_y gauge\nlib_y 1.5\n"
        );
    }
}
