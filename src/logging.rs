//! Log output on standard error: text for people, or JSON lines for log
//! collectors.
//!
//! A JSON line is one flat object: `timestamp`, `level`, `message`, the
//! fields of every span the event happened in (outermost first, so `job`,
//! `backup_id` and `phase` of a run), then the event's own fields (such as
//! `target`). Collectors can then filter on `.job` or `.phase` directly.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one flat JSON object.
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut object = Map::new();
        let now = time::OffsetDateTime::now_utc();
        let timestamp = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        object.insert("timestamp".to_string(), Value::String(timestamp));
        object.insert("level".to_string(), Value::String(event.metadata().level().to_string()));
        if let Some(scope) = context.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields)
                {
                    object.extend(fields);
                }
            }
        }
        event.record(&mut Visitor(&mut object));
        writeln!(writer, "{}", Value::Object(object))
    }
}

struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::Bool(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::String(format!("{value:?}")));
    }
}

static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes [`error`], [`warn`] and [`note`] write JSON log lines.
pub fn set_json(json: bool) {
    JSON.store(json, std::sync::atomic::Ordering::Relaxed);
}

/// Writes a command's message for the person at the terminal on standard
/// error, or, with JSON logs, as a log line so that every line there is JSON.
fn line(level: tracing::Level, prefix: &str, text: &str) {
    if !JSON.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{prefix}{text}");
    } else if level == tracing::Level::ERROR {
        tracing::error!("{text}");
    } else if level == tracing::Level::WARN {
        tracing::warn!("{text}");
    } else {
        tracing::info!("{text}");
    }
}

/// Reports an error of a command.
pub fn error(text: &str) {
    line(tracing::Level::ERROR, "error: ", text);
}

/// Reports a warning of a command.
pub fn warn(text: &str) {
    line(tracing::Level::WARN, "warning: ", text);
}

/// Reports a fact the person running a command should see, such as which
/// target a restore reads from.
pub fn note(text: &str) {
    line(tracing::Level::INFO, "", text);
}
