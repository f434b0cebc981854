//! `/metrics` in Prometheus' text format 0.0.4, for the clients that do not
//! ask for OpenMetrics: `promtool check metrics`, older scrapers, agents
//! that speak only the text format. A real Prometheus asks for OpenMetrics
//! and gets it as encoded; everyone else gets this translation of it.
//!
//! The two formats differ, for what psmon exposes, in a few places: the
//! text format names a counter's family after its sample (`x_total`), has
//! no `info` type (an info is a gauge `x_info` of value 1), no `UNIT`
//! lines, no exemplars, no `_created` samples and no `# EOF`.

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The text format of an OpenMetrics exposition.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE, which says how to rename it.
    let mut help: Option<&str> = None;
    let mut family = Family::default();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = Family::new(name, kind);
            if let Some(help) = help.take() {
                let text = help.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {} {text}\n", family.exposed));
            }
            out.push_str(&format!("# TYPE {} {}\n", family.exposed, family.kind));
        } else if line.starts_with('#') {
            // UNIT, EOF, and any other comment of OpenMetrics'.
        } else if !line.is_empty() {
            let sample = strip_exemplar(line);
            let name = sample.split(['{', ' ']).next().unwrap_or("");
            if family.created.as_deref() == Some(name) {
                continue;
            }
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// The family being translated.
#[derive(Default)]
struct Family {
    /// Its name in the text format.
    exposed: String,
    /// Its type in the text format.
    kind: &'static str,
    /// The name of its `_created` samples, which the text format has not.
    created: Option<String>,
}

impl Family {
    fn new(name: &str, kind: &str) -> Family {
        let created = Some(format!("{name}_created"));
        match kind {
            "counter" => Family {
                exposed: format!("{name}_total"),
                kind: "counter",
                created,
            },
            "info" => Family {
                exposed: format!("{name}_info"),
                kind: "gauge",
                created: None,
            },
            "gauge" => Family {
                exposed: name.to_string(),
                kind: "gauge",
                created: None,
            },
            "histogram" => Family {
                exposed: name.to_string(),
                kind: "histogram",
                created,
            },
            "summary" => Family {
                exposed: name.to_string(),
                kind: "summary",
                created,
            },
            _ => Family {
                exposed: name.to_string(),
                kind: "untyped",
                created: None,
            },
        }
    }
}

/// A sample line without its exemplar (` # {…} value`), which only
/// OpenMetrics has. A `#` inside a quoted label value is no exemplar.
fn strip_exemplar(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_renamed_as_the_text_format_names_them() {
        let om = "# HELP psmon_build psmon's version.\n\
                  # TYPE psmon_build info\n\
                  psmon_build_info{version=\"0.1.0\"} 1\n\
                  # HELP psmon_entry_restarts Restarts.\n\
                  # TYPE psmon_entry_restarts counter\n\
                  psmon_entry_restarts_total{path=\"/a # b\"} 2 # {trace=\"x\"} 1.0\n\
                  psmon_entry_restarts_created{path=\"/a # b\"} 1.7e9\n\
                  # HELP psmon_detection_seconds Detection.\n\
                  # TYPE psmon_detection_seconds histogram\n\
                  # UNIT psmon_detection_seconds seconds\n\
                  psmon_detection_seconds_sum 0.5\n\
                  psmon_detection_seconds_count 3\n\
                  psmon_detection_seconds_bucket{le=\"+Inf\"} 3\n\
                  # HELP psmon_entry_up Up.\n\
                  # TYPE psmon_entry_up gauge\n\
                  psmon_entry_up{path=\"/a\"} 1\n\
                  # EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP psmon_build_info psmon's version.\n\
             # TYPE psmon_build_info gauge\n\
             psmon_build_info{version=\"0.1.0\"} 1\n\
             # HELP psmon_entry_restarts_total Restarts.\n\
             # TYPE psmon_entry_restarts_total counter\n\
             psmon_entry_restarts_total{path=\"/a # b\"} 2\n\
             # HELP psmon_detection_seconds Detection.\n\
             # TYPE psmon_detection_seconds histogram\n\
             psmon_detection_seconds_sum 0.5\n\
             psmon_detection_seconds_count 3\n\
             psmon_detection_seconds_bucket{le=\"+Inf\"} 3\n\
             # HELP psmon_entry_up Up.\n\
             # TYPE psmon_entry_up gauge\n\
             psmon_entry_up{path=\"/a\"} 1\n"
        );
    }
}
