//! Kong's `file-log` plugin: one JSON line ([`super::log_serializer`]) per request appended to a
//! file. The proxy thread only serializes and enqueues; the file is opened and written by the
//! instance's queue thread ([`super::log_queue`], one entry at a time, no retries), so no file
//! I/O ever runs on a proxy thread.
//!
//! The file stays open between entries and is reopened after the process receives `SIGUSR1`
//! (after logrotate has moved it: [`crate::plugin_api::reopen_log_files`]), or for every entry
//! when `reopen` is true, as Kong does. `custom_fields_by_lua` is refused: Portcullis runs no Lua.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::log_queue::{LogQueue, QueueSettings, Sender, Sending};
use super::log_serializer::{refuse_lua, SerializingLogger};
use super::{Plugin, PluginRuntime};
use crate::entities::PluginInstance;
use crate::plugin_api::log_files_generation;
use crate::schema::{Field, FieldErrors, FieldType, Schema};

const NAME: &str = "file-log";
const PRIORITY: i32 = super::priority("file-log");

/// Entries that may wait for the writer (Kong's queue default `max_entries`).
const MAX_WAITING: usize = 10_000;

/// The plugin kind.
pub struct FileLog;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    name: NAME,
    fields: vec![
        Field::new("path", FieldType::String)
            .required()
            .check(check_path)
            .pattern(r"^[^\s*&%\\`][^*&%\\`]*[^\s*&%\\`]$"),
        Field::new("reopen", FieldType::Boolean)
            .required()
            .default(|| json!(false)),
        Field::new("custom_fields_by_lua", FieldType::StringMap),
    ],
    entity_checks: vec![],
});

/// Kong's filename rule: at least two characters, none of `*&%\` and a backquote, no
/// white space at either end.
fn check_path(v: &Value) -> Result<(), String> {
    let path = v.as_str().unwrap_or_default();
    let bad = |c: char| matches!(c, '*' | '&' | '%' | '\\' | '`');
    let chars: Vec<char> = path.chars().collect();
    let ok = chars.len() >= 2
        && !chars.iter().copied().any(bad)
        && !chars[0].is_whitespace()
        && !chars[chars.len() - 1].is_whitespace();
    if ok {
        Ok(())
    } else {
        Err("not a valid filename".into())
    }
}

impl Plugin for FileLog {
    fn name(&self) -> &'static str {
        NAME
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
    fn check_config(&self, config: &Map<String, Value>) -> Result<(), FieldErrors> {
        refuse_lua(config)
    }
    fn compile(&self, instance: &PluginInstance) -> Result<Arc<dyn PluginRuntime>, String> {
        let path = instance
            .config
            .get("path")
            .and_then(Value::as_str)
            .ok_or("file-log config has no path")?;
        let reopen = instance
            .config
            .get("reopen")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let writer = Arc::new(Writer {
            path: PathBuf::from(path),
            reopen,
            open: Mutex::new(None),
        });
        let sender: Sender = Arc::new(move |batch: Arc<[String]>| -> Sending {
            let result = writer.write(&batch);
            Box::pin(async move { result })
        });
        let settings = QueueSettings {
            max_batch_size: 1,
            max_coalescing_delay: Duration::ZERO,
            max_entries: MAX_WAITING,
            max_bytes: None,
            max_retry_time: None,
            initial_retry_delay: Duration::ZERO,
            max_retry_delay: Duration::ZERO,
            unlimited_concurrency: false,
        };
        let queue = LogQueue::start(NAME, instance.id, settings, sender)?;
        Ok(Arc::new(SerializingLogger {
            name: NAME,
            priority: PRIORITY,
            queue,
        }))
    }
}

/// The file end, used only by the queue's thread.
struct Writer {
    path: PathBuf,
    reopen: bool,
    /// The open file and the reopen generation it was opened in.
    open: Mutex<Option<(File, u64)>>,
}

impl Writer {
    /// Appends the entries, one line each, opening the file first when it is not open, when
    /// `reopen` is set, or when a reopen was asked since it was opened.
    fn write(&self, entries: &[String]) -> Result<(), String> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| "file-log writer poisoned".to_string())?;
        let generation = log_files_generation();
        let stale = open
            .as_ref()
            .is_none_or(|(_, opened)| self.reopen || *opened != generation);
        if stale {
            *open = None;
            let file = open_append(&self.path)
                .map_err(|e| format!("failed to open the file {}: {e}", self.path.display()))?;
            *open = Some((file, generation));
        }
        let Some((file, _)) = open.as_mut() else {
            return Err("file-log file not open".into());
        };
        let mut lines = String::with_capacity(entries.iter().map(|e| e.len() + 1).sum());
        for entry in entries {
            lines.push_str(entry);
            lines.push('\n');
        }
        let written = file.write_all(lines.as_bytes());
        if self.reopen {
            *open = None;
        }
        written.map_err(|e| format!("failed to write to {}: {e}", self.path.display()))
    }
}

/// Opens for appending, creating the file `rw-r--r--` as Kong does.
fn open_append(path: &std::path::Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o644);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_s_filename_rule() {
        for good in ["/tmp/log.json", "ab", "a b"] {
            assert!(check_path(&json!(good)).is_ok(), "{good}");
        }
        for bad in [
            "/ovo*",
            "/ovo`",
            "test&thing",
            "test%thing",
            "test\\thing",
            " /a",
            "/a ",
            "a",
        ] {
            assert_eq!(
                check_path(&json!(bad)),
                Err("not a valid filename".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn lines_are_appended_and_the_file_reopened_after_a_reopen_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let writer = Writer {
            path: path.clone(),
            reopen: false,
            open: Mutex::new(None),
        };
        writer.write(&["{\"a\":1}".into()]).unwrap();
        let rotated = dir.path().join("log.json.1");
        std::fs::rename(&path, &rotated).unwrap();
        writer.write(&["{\"a\":2}".into()]).unwrap();
        crate::plugin_api::reopen_log_files();
        writer.write(&["{\"a\":3}".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":3}\n");
    }
}
