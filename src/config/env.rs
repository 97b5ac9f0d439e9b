//! Configuration from environment variables, so a container needs no file.
//!
//! Every key has a variable: `SESSBACKUP_` and the key's path in upper
//! case, its parts joined by double underscores:
//!
//! - `SESSBACKUP_JOB__SESSIONS__REDIS_URL` is `redis_url` of job `sessions`;
//! - `SESSBACKUP_JOB__SESSIONS__RETENTION__KEEP_DAILY` is in its
//!   `[job.retention]`;
//! - `SESSBACKUP_TARGET__S3__BUCKET` is `bucket` of target `s3`;
//! - `SESSBACKUP_DAEMON__METRICS_LISTEN` is in `[daemon]`.
//!
//! The variables become a TOML document of their own, merged over the
//! file's. A variable replaces the key of the same job or target in the
//! file, or adds it, and a job or target the file lacks is created. Values are
//! read as TOML when they are a TOML value (`3`, `true`, `"text"`,
//! `["a", "b"]`) and as text otherwise. Arrays of names may also be given as
//! `local,s3`.

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

/// The variables that configure sessbackup, in a TOML document.
pub(super) struct Layer {
    /// The document; its byte offsets continue those of the file's text
    /// plus one newline.
    pub(super) text: String,
    /// For each line of `text`, from its start offset: the variables it
    /// came from, for messages.
    pub(super) lines: Vec<(usize, String)>,
    /// Variables whose names are not a configuration path.
    pub(super) invalid: Vec<String>,
}

const PREFIX: &str = "SESSBACKUP_";
const SECTIONS: [&str; 3] = ["JOB", "TARGET", "DAEMON"];

/// Returns whether `name` is meant as a configuration variable (as opposed
/// to, say, `SESSBACKUP_CONFIG`, or the service variables Kubernetes adds).
/// Misspelt ones such as `SESSBACKUP_JOB_SESSIONS__SCHEDULE` count, so that
/// they are reported rather than ignored.
pub(super) fn is_config_variable(name: &str) -> bool {
    name.strip_prefix(PREFIX).is_some_and(|rest| SECTIONS.iter().any(|section| rest.starts_with(section)))
}

/// Returns the configuration variables of this process, sorted by name.
pub(super) fn variables() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            is_config_variable(&name).then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect();
    out.sort();
    out
}

/// One table of the generated document: section, name and sub-table.
type TableKey = (String, Option<String>, Option<String>);

/// Turns `variables` into a TOML document.
pub(super) fn layer(variables: &[(String, String)]) -> Layer {
    let mut tables: BTreeMap<TableKey, Vec<(String, String, &str)>> = BTreeMap::new();
    let mut invalid = Vec::new();
    for (name, value) in variables {
        let parts: Vec<&str> = name[PREFIX.len()..].split("__").collect();
        let key = |part: &str| part.to_ascii_lowercase();
        let (table, field) = match parts.as_slice() {
            ["JOB" | "TARGET", item, field] if !item.is_empty() && !field.is_empty() => {
                ((key(parts[0]), Some(key(item)), None), key(field))
            }
            ["JOB" | "TARGET", item, sub, field] if !item.is_empty() && !sub.is_empty() && !field.is_empty() => {
                ((key(parts[0]), Some(key(item)), Some(key(sub))), key(field))
            }
            ["DAEMON", field] if !field.is_empty() => (("daemon".to_string(), None, None), key(field)),
            _ => {
                invalid.push(name.clone());
                continue;
            }
        };
        tables.entry(table).or_default().push((field, literal(value), name.as_str()));
    }

    let mut text = String::new();
    let mut lines = Vec::new();
    for ((section, item, sub), fields) in tables {
        let header = match (&item, &sub) {
            (Some(item), Some(sub)) => format!("[{section}.{}.{}]", quote(item), quote(sub)),
            (Some(item), None) => format!("[{section}.{}]", quote(item)),
            _ => format!("[{section}]"),
        };
        let group = match (&item, &sub) {
            (Some(item), Some(sub)) => {
                format!("{PREFIX}{}__{}__{}__*", section.to_uppercase(), item.to_uppercase(), sub.to_uppercase())
            }
            (Some(item), None) => format!("{PREFIX}{}__{}__*", section.to_uppercase(), item.to_uppercase()),
            _ => format!("{PREFIX}{}__*", section.to_uppercase()),
        };
        lines.push((text.len(), group));
        text.push_str(&header);
        text.push('\n');
        for (field, value, variable) in fields {
            lines.push((text.len(), variable.to_string()));
            text.push_str(&format!("{} = {value}\n", quote(&field)));
        }
    }
    Layer { text, lines, invalid }
}

/// Returns the value as TOML: itself when it is a TOML value, else a string.
fn literal(value: &str) -> String {
    let trimmed = value.trim();
    let is_toml = !trimmed.is_empty()
        && !trimmed.contains('\n')
        && DeTable::parse(&format!("value = {trimmed}\n")).is_ok_and(|table| table.get_ref().len() == 1);
    if is_toml { trimmed.to_string() } else { quote(value) }
}

/// Returns `text` as a TOML string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Job and target names from variables are upper case, and `_` stands for
/// `-`, which variable names cannot hold.
fn same_name(variable_name: &str, file_name: &str) -> bool {
    let normal = |name: &str| name.to_ascii_lowercase().replace('-', "_");
    normal(variable_name) == normal(file_name)
}

/// Merges the variables' document `layer` into the file's `root`.
pub(super) fn merge<'i>(root: &mut DeTable<'i>, layer: DeTable<'i>) {
    for (section, value) in layer {
        let section_span = section.span();
        let DeValue::Table(items) = value.into_inner() else { continue };
        match section.get_ref().as_ref() {
            "daemon" => {
                let daemon = table_entry(root, section.clone());
                overlay(daemon, items);
            }
            plural @ ("job" | "target") => {
                for (item_name, item) in items {
                    let DeValue::Table(fields) = item.get_ref().clone() else { continue };
                    let array = array_entry(root, Spanned::new(section_span.clone(), plural.to_string().into()));
                    let existing = array.iter_mut().find_map(|element| match element.get_mut() {
                        DeValue::Table(table) => {
                            let named = table
                                .iter()
                                .find(|(key, _)| key.get_ref() == "name")
                                .and_then(|(_, name)| match name.get_ref() {
                                    DeValue::String(name) => Some(same_name(item_name.get_ref(), name)),
                                    _ => None,
                                })
                                .unwrap_or(false);
                            named.then_some(table)
                        }
                        _ => None,
                    });
                    match existing {
                        Some(table) => overlay(table, fields),
                        None => {
                            let mut table = DeTable::new();
                            table.insert(
                                Spanned::new(item_name.span(), "name".into()),
                                Spanned::new(item_name.span(), DeValue::String(item_name.get_ref().clone())),
                            );
                            overlay(&mut table, fields);
                            array.push(Spanned::new(item.span(), DeValue::Table(table)));
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Puts `fields` over `table`: sub-tables key by key, other values whole.
fn overlay<'i>(table: &mut DeTable<'i>, fields: DeTable<'i>) {
    for (key, value) in fields {
        let sub = table.iter_mut().find(|(name, _)| name.get_ref() == key.get_ref()).map(|(_, value)| value);
        match (sub, value.get_ref()) {
            (Some(existing), DeValue::Table(new)) if matches!(existing.get_ref(), DeValue::Table(_)) => {
                let DeValue::Table(existing) = existing.get_mut() else { unreachable!("matched a table") };
                overlay(existing, new.clone());
            }
            _ => {
                table.remove(&key);
                table.insert(key, value);
            }
        }
    }
}

fn table_entry<'t, 'i>(root: &'t mut DeTable<'i>, key: Spanned<toml::de::DeString<'i>>) -> &'t mut DeTable<'i> {
    let span = key.span();
    let entry = root.entry(key).or_insert_with(|| Spanned::new(span, DeValue::Table(DeTable::new())));
    if !matches!(entry.get_ref(), DeValue::Table(_)) {
        // A [daemon] of the wrong type in the file is reported there; the
        // variables replace it.
        *entry.get_mut() = DeValue::Table(DeTable::new());
    }
    match entry.get_mut() {
        DeValue::Table(table) => table,
        _ => unreachable!("made a table above"),
    }
}

fn array_entry<'t, 'i>(root: &'t mut DeTable<'i>, key: Spanned<toml::de::DeString<'i>>) -> &'t mut DeArray<'i> {
    let span = key.span();
    let entry = root.entry(key).or_insert_with(|| Spanned::new(span, DeValue::Array(DeArray::new())));
    if !matches!(entry.get_ref(), DeValue::Array(_)) {
        *entry.get_mut() = DeValue::Array(DeArray::new());
    }
    match entry.get_mut() {
        DeValue::Array(array) => array,
        _ => unreachable!("made an array above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        out.sort();
        out
    }

    #[test]
    fn only_configuration_paths_are_read() {
        assert!(is_config_variable("SESSBACKUP_JOB__SESSIONS__REDIS_URL"));
        assert!(is_config_variable("SESSBACKUP_DAEMON__STATE_DIR"));
        assert!(!is_config_variable("SESSBACKUP_CONFIG"));
        assert!(!is_config_variable("SESSBACKUP_SERVICE_HOST"));
        assert!(!is_config_variable("SESSBACKUP_FIXTURES"));
        // Misspelt, so read and then reported.
        assert!(is_config_variable("SESSBACKUP_JOB_SESSIONS__SCHEDULE"));
    }

    #[test]
    fn values_become_toml() {
        assert_eq!(literal("3"), "3");
        assert_eq!(literal("true"), "true");
        assert_eq!(literal("[\"local\", \"s3\"]"), "[\"local\", \"s3\"]");
        assert_eq!(literal("\"2024\""), "\"2024\"");
        assert_eq!(literal("redis://127.0.0.1:6379/"), "\"redis://127.0.0.1:6379/\"");
        assert_eq!(literal("30 2 * * *"), "\"30 2 * * *\"");
        assert_eq!(literal("local,s3"), "\"local,s3\"");
        assert_eq!(literal("a \"quoted\" \\ text"), "'a \"quoted\" \\ text'");
        assert_eq!(literal("x = 1"), "\"x = 1\"");
    }

    #[test]
    fn layer_groups_variables_into_tables() {
        let layer = layer(&vars(&[
            ("SESSBACKUP_JOB__SESSIONS__REDIS_URL", "redis://127.0.0.1:6379/"),
            ("SESSBACKUP_JOB__SESSIONS__RETENTION__KEEP_DAILY", "7"),
            ("SESSBACKUP_DAEMON__STATE_DIR", "/state"),
            ("SESSBACKUP_JOB__", "x"),
        ]));
        assert_eq!(
            layer.text,
            "[daemon]\n\"state_dir\" = \"/state\"\n[job.\"sessions\"]\n\"redis_url\" = \"redis://127.0.0.1:6379/\"\n\
             [job.\"sessions\".\"retention\"]\n\"keep_daily\" = 7\n"
        );
        assert_eq!(layer.invalid, ["SESSBACKUP_JOB__"]);
        assert_eq!(layer.lines[0].1, "SESSBACKUP_DAEMON__*");
        assert_eq!(layer.lines[2].1, "SESSBACKUP_JOB__SESSIONS__*");
        assert_eq!(layer.lines[3].1, "SESSBACKUP_JOB__SESSIONS__REDIS_URL");
    }

    fn parse(text: &str, pairs: &[(&str, &str)]) -> Result<crate::config::Config, String> {
        crate::config::parse_with_variables(text, &vars(pairs)).map_err(|problems| {
            problems
                .iter()
                .map(|problem| format!("{:?}: {}", problem.line, problem.message))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn variables_alone_configure_a_job() {
        let config = parse(
            "",
            &[
                ("SESSBACKUP_JOB__SESSIONS__REDIS_URL", "redis://127.0.0.1:6379/"),
                ("SESSBACKUP_JOB__SESSIONS__TARGETS", "local, s3"),
                ("SESSBACKUP_JOB__SESSIONS__SCHEDULE", "*/15 * * * *"),
                ("SESSBACKUP_JOB__SESSIONS__COMPRESSION_LEVEL", "5"),
                ("SESSBACKUP_JOB__SESSIONS__RETENTION__KEEP_LAST", "4"),
                ("SESSBACKUP_TARGET__LOCAL__TYPE", "local"),
                ("SESSBACKUP_TARGET__LOCAL__PATH", "/backups"),
                ("SESSBACKUP_TARGET__S3__TYPE", "s3"),
                ("SESSBACKUP_TARGET__S3__BUCKET", "\"2024\""),
                ("SESSBACKUP_TARGET__S3__RETENTION__KEEP_DAILY", "7"),
                ("SESSBACKUP_DAEMON__METRICS_LISTEN", "0.0.0.0:9187"),
            ],
        )
        .unwrap();
        let job = &config.jobs[0];
        assert_eq!(job.name, "sessions");
        assert_eq!(job.targets, ["local", "s3"]);
        assert_eq!(job.compression_level, 5);
        assert_eq!(job.schedule.as_ref().unwrap().expression(), "*/15 * * * *");
        assert_eq!(job.retention.as_ref().unwrap().keep_last, 4);
        assert_eq!(config.target("s3").unwrap().retention.as_ref().unwrap().keep_daily, 7);
        assert_eq!(config.daemon.metrics_listen.unwrap().port(), 9187);
    }

    #[test]
    fn variables_override_and_extend_the_file() {
        let file = "[[job]]\nname = \"offsite-sessions\"\nredis_url = \"redis://10.0.0.1:6379/\"\ncompression_level = 3\ntargets = [\"local\"]\n\
                    [job.retention]\nkeep_last = 2\nkeep_daily = 3\n\n\
                    [[target]]\nname = \"local\"\ntype = \"local\"\npath = \"/backups\"\n";
        let config = parse(
            file,
            &[
                ("SESSBACKUP_JOB__OFFSITE_SESSIONS__REDIS_URL", "redis://127.0.0.1:6379/"),
                ("SESSBACKUP_JOB__OFFSITE_SESSIONS__RETENTION__KEEP_LAST", "9"),
                ("SESSBACKUP_JOB__CACHE__REDIS_URL", "redis://127.0.0.1:6380/"),
                ("SESSBACKUP_JOB__CACHE__TARGETS", "[\"local\"]"),
            ],
        )
        .unwrap();
        assert_eq!(config.jobs.len(), 2);
        let sessions = config.job("offsite-sessions").unwrap();
        assert_eq!(sessions.redis.display_url(), "redis://127.0.0.1:6379/");
        assert_eq!(sessions.compression_level, 3);
        let retention = sessions.retention.as_ref().unwrap();
        assert_eq!((retention.keep_last, retention.keep_daily), (9, 3));
        assert_eq!(config.job("cache").unwrap().targets, ["local"]);
    }

    #[test]
    fn problems_name_the_variable() {
        let file = "[[target]]\nname = \"local\"\ntype = \"local\"\npath = \"/backups\"\n";
        let message = parse(
            file,
            &[
                ("SESSBACKUP_JOB__SESSIONS__REDIS_URL", "redis://127.0.0.1:6379/"),
                ("SESSBACKUP_JOB__SESSIONS__TARGETS", "local"),
                ("SESSBACKUP_JOB__SESSIONS__COMPRESSION_LEVEL", "fast"),
                ("SESSBACKUP_JOB__SESSIONS__RETENSION__KEEP_LAST", "3"),
                ("SESSBACKUP_JOB__SESSIONS__REDIS__URL__X", "1"),
                ("SESSBACKUP_JOB_SESSIONS__SCHEDULE", "@daily"),
                ("SESSBACKUP_JOB__SESSIONS__RETENTION__KEEP_LAST", "three"),
                ("SESSBACKUP_DAEMON__SHUTDOWN_TIMEOUT_SECS", "0"),
            ],
        )
        .unwrap_err();
        for expected in [
            "None: environment variable SESSBACKUP_JOB__SESSIONS__COMPRESSION_LEVEL: [[job]] key compression_level must be an integer, found a string",
            "environment variable SESSBACKUP_JOB__SESSIONS__REDIS__URL__X: not a configuration key",
            "environment variable SESSBACKUP_JOB_SESSIONS__SCHEDULE: not a configuration key",
            "environment variable SESSBACKUP_JOB__SESSIONS__RETENTION__KEEP_LAST: [retention] key keep_last must be an integer",
            "environment variable SESSBACKUP_DAEMON__SHUTDOWN_TIMEOUT_SECS: [daemon] shutdown_timeout_secs 0 is out of range",
            "environment variable SESSBACKUP_JOB__SESSIONS__RETENSION__*: unknown key \"retension\" in [[job]]",
        ] {
            assert!(message.contains(expected), "missing {expected:?} in:\n{message}");
        }
        assert!(!message.contains("sets no rule"), "{message}");
    }

    #[test]
    fn incomplete_variable_job_is_rejected() {
        let message = parse("", &[("SESSBACKUP_JOB__SESSIONS__TARGETS", "local")]).unwrap_err();
        assert!(message.contains("SESSBACKUP_JOB__SESSIONS__"), "{message}");
        assert!(message.contains("redis_url"), "{message}");
    }
}
