//! Reading the spanned TOML document: typed access to a table's keys, with
//! every problem recorded against its line, and unknown keys found at the end.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Problem, SecretSource};

/// Byte range of a value in the configuration text.
pub(super) type Span = std::ops::Range<usize>;

/// Problems collected while reading the document.
pub(super) struct Problems<'t> {
    pub(super) text: &'t str,
    pub(super) list: Vec<Problem>,
    /// Also check secret sources, CA files and target folders on this host.
    pub(super) check_environment: bool,
    /// Start of the document made of environment variables in `text`
    /// (`usize::MAX` without one).
    pub(super) env_start: usize,
    /// Start offsets of its lines (relative to `env_start`) and the
    /// variables each came from.
    pub(super) env_lines: &'t [(usize, String)],
}

impl Problems<'_> {
    pub(super) fn add(&mut self, span: std::ops::Range<usize>, message: String) {
        if span.start >= self.env_start {
            let offset = span.start - self.env_start;
            let variable = self
                .env_lines
                .iter()
                .take_while(|(start, _)| *start <= offset)
                .last()
                .map_or("SESSBACKUP_*", |(_, variable)| variable.as_str());
            self.list.push(Problem { line: None, message: format!("environment variable {variable}: {message}") });
            return;
        }
        let line = line_of(self.text, span.start);
        self.list.push(Problem { line: Some(line), message });
    }

    /// Returns whether the value at `span` came from an environment variable.
    pub(super) fn is_from_environment(&self, span: &std::ops::Range<usize>) -> bool {
        span.start >= self.env_start
    }
}

/// Replaces a leading `$CREDENTIALS_DIRECTORY` (or `${CREDENTIALS_DIRECTORY}`)
/// with the folder systemd's `LoadCredential=` fills for the running unit,
/// so one configuration file serves several units.
pub(super) fn expand_credentials_directory(path: &str) -> Result<String, String> {
    let rest = ["$CREDENTIALS_DIRECTORY", "${CREDENTIALS_DIRECTORY}"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix).filter(|rest| rest.is_empty() || rest.starts_with('/')));
    let Some(rest) = rest else { return Ok(path.to_string()) };
    match std::env::var("CREDENTIALS_DIRECTORY") {
        Ok(folder) if !folder.is_empty() => Ok(format!("{folder}{rest}")),
        _ => Err(format!(
            "{path:?} names $CREDENTIALS_DIRECTORY, which is not set here; systemd sets it for units with LoadCredential=, elsewhere give the full path"
        )),
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// Keys of one table, read by name; whatever is not read is unknown.
pub(super) struct Fields<'a, 'i> {
    table: &'a DeTable<'i>,
    context: &'static str,
    used: HashSet<String>,
}

impl<'a, 'i> Fields<'a, 'i> {
    pub(super) fn new(table: &'a DeTable<'i>, context: &'static str) -> Self {
        Fields { table, context, used: HashSet::new() }
    }

    fn get(&mut self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.used.insert(key.to_string());
        self.table.iter().find(|(name, _)| name.get_ref() == key).map(|(_, value)| value)
    }

    fn wrong_type(&self, problems: &mut Problems<'_>, key: &str, value: &Spanned<DeValue<'_>>, expected: &str) {
        problems.add(
            value.span(),
            format!("{} key {key} must be {expected}, found {}", self.context, type_name(value.get_ref())),
        );
    }

    pub(super) fn string(
        &mut self,
        problems: &mut Problems<'_>,
        key: &str,
    ) -> Option<(String, std::ops::Range<usize>)> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::String(text) => Some((text.to_string(), value.span())),
            _ => {
                self.wrong_type(problems, key, value, "a string");
                None
            }
        }
    }

    pub(super) fn integer(&mut self, problems: &mut Problems<'_>, key: &str) -> Option<(i64, std::ops::Range<usize>)> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::Integer(integer) => match i64::from_str_radix(integer.as_str(), integer.radix()) {
                Ok(number) => Some((number, value.span())),
                Err(_) => {
                    problems.add(
                        value.span(),
                        format!("{} key {key}: {} does not fit in 64 bits", self.context, integer.as_str()),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(problems, key, value, "an integer");
                None
            }
        }
    }

    pub(super) fn string_array(
        &mut self,
        problems: &mut Problems<'_>,
        key: &str,
    ) -> Option<(Vec<String>, std::ops::Range<usize>)> {
        let value = self.get(key)?;
        // A variable may list names separated by commas.
        if let DeValue::String(text) = value.get_ref()
            && problems.is_from_environment(&value.span())
        {
            let names = text.split(',').map(str::trim).filter(|name| !name.is_empty()).map(String::from).collect();
            return Some((names, value.span()));
        }
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(problems, key, value, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(text) => out.push(text.to_string()),
                _ => self.wrong_type(problems, key, item, "an array of strings"),
            }
        }
        Some((out, value.span()))
    }

    pub(super) fn boolean(&mut self, problems: &mut Problems<'_>, key: &str) -> Option<(bool, Span)> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(flag) => Some((*flag, value.span())),
            _ => {
                self.wrong_type(problems, key, value, "true or false");
                None
            }
        }
    }

    /// Reads a secret given as `<key>_env` (an environment variable) or
    /// `<key>_file` (a file), at most one of the two. With environment checks
    /// on, also reports a variable that is unset or empty, or a file that
    /// cannot be read.
    pub(super) fn secret(
        &mut self,
        problems: &mut Problems<'_>,
        key: &str,
        context: &str,
    ) -> Option<(SecretSource, Span)> {
        let env_key = format!("{key}_env");
        let file_key = format!("{key}_file");
        let env = self.string(problems, &env_key);
        let file = self.string(problems, &file_key);
        let (source, span) = match (env, file) {
            (Some((_, span)), Some(_)) => {
                problems.add(span, format!("{context}: set {env_key} or {file_key}, not both"));
                return None;
            }
            (Some((name, span)), None) => {
                if name.is_empty() {
                    problems.add(span, format!("{context}: {env_key} is empty; name an environment variable"));
                    return None;
                }
                (SecretSource::Env { variable: name, key: env_key }, span)
            }
            (None, Some((path, span))) => {
                let path = match expand_credentials_directory(&path) {
                    Ok(path) => path,
                    Err(message) => {
                        problems.add(span, format!("{context}: {file_key} {message}"));
                        return None;
                    }
                };
                if !Path::new(&path).is_absolute() {
                    problems.add(span, format!("{context}: {file_key} {path:?} must be an absolute path"));
                    return None;
                }
                (SecretSource::File { path: PathBuf::from(path), key: file_key }, span)
            }
            (None, None) => return None,
        };
        if problems.check_environment
            && let Err(message) = source.resolve()
        {
            problems.add(span.clone(), format!("{context}: {message}"));
        }
        Some((source, span))
    }

    /// Reads the required `name` key, which must be a valid object-name component.
    pub(super) fn name(
        &mut self,
        problems: &mut Problems<'_>,
        span: std::ops::Range<usize>,
        what: &str,
    ) -> Option<String> {
        match self.string(problems, "name") {
            None => {
                problems.add(span, format!("{what} has no name; add name = \"...\""));
                None
            }
            Some((name, name_span)) => {
                if is_valid_name(&name) {
                    Some(name)
                } else {
                    problems.add(
                        name_span,
                        format!(
                            "{what} name {name:?} is invalid; use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
                        ),
                    );
                    None
                }
            }
        }
    }

    pub(super) fn array_of_tables(
        &mut self,
        problems: &mut Problems<'_>,
        key: &str,
    ) -> Vec<(DeTable<'i>, std::ops::Range<usize>)> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(problems, key, value, &format!("an array of tables ([[{key}]])"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::Table(table) => out.push((table.clone(), item.span())),
                _ => self.wrong_type(problems, key, item, &format!("an array of tables ([[{key}]])")),
            }
        }
        out
    }

    /// Reads a sub-table, such as `[job.retention]` or `[daemon]`.
    pub(super) fn table(&mut self, problems: &mut Problems<'_>, key: &str) -> Option<(&'a DeTable<'i>, Span)> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::Table(table) => Some((table, value.span())),
            _ => {
                self.wrong_type(problems, key, value, &format!("a table ([{key}])"));
                None
            }
        }
    }

    /// Reports every key that was not read as unknown.
    pub(super) fn finish(self, problems: &mut Problems<'_>) {
        let mut unknown: BTreeMap<usize, String> = BTreeMap::new();
        for (name, _) in self.table.iter() {
            if !self.used.contains(name.get_ref().as_ref()) {
                unknown.insert(name.span().start, name.get_ref().to_string());
            }
        }
        for (start, name) in unknown {
            problems.add(start..start, format!("unknown key {name:?} in {}", self.context));
        }
    }

    /// Ends without checking for unknown keys, when the table's type is not
    /// known and so its keys cannot be judged.
    pub(super) fn finish_ignoring_rest(self) {}
}

pub(super) fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Reads a duration in whole seconds between 1 and `max`.
pub(super) fn seconds(
    problems: &mut Problems<'_>,
    context: &str,
    key: &str,
    value: Option<(i64, std::ops::Range<usize>)>,
    default: u64,
    max: u64,
) -> Duration {
    match value {
        None => Duration::from_secs(default),
        Some((secs, span)) => {
            if secs < 1 || secs as u64 > max {
                problems.add(span, format!("{context}: {key} {secs} is out of range; use 1 to {max}"));
                Duration::from_secs(default)
            } else {
                Duration::from_secs(secs as u64)
            }
        }
    }
}

/// Checks a job or target name: 1 to 64 letters, digits, '.', '_' or '-',
/// starting with a letter or digit.
pub(super) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(first) if first.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Reads a `retention` table: the keep_* rules. A table with no rule on is a
/// problem, because leaving the table out already keeps every backup.
pub(super) fn retention(
    table: &DeTable<'_>,
    span: Span,
    problems: &mut Problems<'_>,
    context: &str,
) -> Option<crate::retention::Policy> {
    let problems_before = problems.list.len();
    let mut fields = Fields::new(table, "[retention]");
    let mut count = |fields: &mut Fields<'_, '_>, key: &str| -> u32 {
        match fields.integer(problems, key) {
            Some((value, _)) if (0..=100_000).contains(&value) => value as u32,
            Some((value, value_span)) => {
                problems.add(value_span, format!("{context}: retention {key} = {value} must be 0 (off) to 100000"));
                0
            }
            None => 0,
        }
    };
    let keep_last = count(&mut fields, "keep_last");
    let keep_hourly = count(&mut fields, "keep_hourly");
    let keep_daily = count(&mut fields, "keep_daily");
    let keep_weekly = count(&mut fields, "keep_weekly");
    let keep_monthly = count(&mut fields, "keep_monthly");
    let keep_yearly = count(&mut fields, "keep_yearly");
    let keep_within = fields.string(problems, "keep_within").and_then(|(text, value_span)| {
        crate::retention::parse_duration(&text)
            .map_err(|message| problems.add(value_span, format!("{context}: retention keep_within: {message}")))
            .ok()
    });
    fields.finish(problems);
    let policy = crate::retention::Policy {
        keep_last,
        keep_within,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
    };
    // A rule with an invalid value is already reported; "no rule" would
    // only repeat it.
    if !policy.has_rule() && problems.list.len() == problems_before {
        problems.add(
            span,
            format!(
                "{context}: the retention table sets no rule (all are 0 or missing); to keep every backup, leave \
                 the table out"
            ),
        );
        return None;
    }
    Some(policy)
}
