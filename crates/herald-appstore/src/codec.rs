//! An app as a row: `id`, `app_key`, `secret`, and `settings`, a JSON object with every other
//! [`App`] field, so a new setting needs no migration.
//!
//! Invariant: a row is untrusted (anyone with write access to the table may have written it):
//! decoding returns an error for anything that is not a valid app, never panics.

use std::sync::OnceLock;

use herald_core::App;
use serde_json::{Map, Value};

/// The columns that are not in `settings`.
const CREDENTIALS: [&str; 3] = ["id", "key", "secret"];

/// Longest id or key the table holds (`VARCHAR(255)`).
pub const MAX_ID_BYTES: usize = 255;

/// `settings` for an app: every field but the credentials.
pub fn settings_json(app: &App) -> String {
    let mut map = match serde_json::to_value(app) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    for key in CREDENTIALS {
        map.remove(key);
    }
    Value::Object(map).to_string()
}

/// The names of `App`'s fields, from its own serialization.
fn known_fields() -> &'static [String] {
    static FIELDS: OnceLock<Vec<String>> = OnceLock::new();
    FIELDS.get_or_init(|| match serde_json::to_value(App::new("", "", "")) {
        Ok(Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
        _ => Vec::new(),
    })
}

/// A decoded row, and the settings it ignored.
#[derive(Debug)]
pub struct Decoded {
    pub app: App,
    /// Settings this herald does not know (written by a newer one): ignored, so a rolling
    /// upgrade does not take the app down on the older nodes.
    pub unknown: Vec<String>,
}

/// An app from its row.
///
/// # Errors
/// What makes the row unusable: settings that are not a JSON object, a setting of the wrong
/// type, or an app herald would refuse in its configuration file.
pub fn decode(id: String, key: String, secret: String, settings: &str) -> Result<Decoded, String> {
    let settings: Value =
        serde_json::from_str(settings).map_err(|err| format!("settings are not JSON: {err}"))?;
    let Value::Object(settings) = settings else {
        return Err("settings are not a JSON object".into());
    };
    let known = known_fields();
    let mut map = Map::new();
    let mut unknown = Vec::new();
    for (name, value) in settings {
        if CREDENTIALS.contains(&name.as_str()) {
            // The columns are the truth; a copy in settings is ignored.
            continue;
        }
        if known.contains(&name) {
            map.insert(name, value);
        } else {
            unknown.push(name);
        }
    }
    map.insert("id".into(), Value::String(id));
    map.insert("key".into(), Value::String(key));
    map.insert("secret".into(), Value::String(secret));
    let app: App = serde_json::from_value(Value::Object(map))
        .map_err(|err| format!("settings do not decode: {err}"))?;
    validate(&app)?;
    Ok(Decoded { app, unknown })
}

/// What the configuration file would refuse for an app, checked on every row read and every
/// app written.
///
/// # Errors
/// The first rule broken.
pub fn validate(app: &App) -> Result<(), String> {
    if app.id.is_empty() || app.key.is_empty() || app.secret.expose().is_empty() {
        return Err("id, key and secret must not be empty".into());
    }
    if app.id.len() > MAX_ID_BYTES || app.key.len() > MAX_ID_BYTES {
        return Err(format!("id and key are at most {MAX_ID_BYTES} bytes"));
    }
    if app.max_client_events_per_second == 0 {
        return Err("max_client_events_per_second must be at least 1".into());
    }
    for hook in &app.webhooks {
        if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
            return Err("webhook urls must be http:// or https:// URLs".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_round_trips_through_its_row() {
        let mut app = App::new("7", "k7", "s7");
        app.enabled = false;
        app.allowed_origins = vec!["https://a.test".into()];
        app.max_connections = 3;
        let settings = settings_json(&app);
        assert!(!settings.contains("s7"), "the secret has its own column");
        let decoded = decode("7".into(), "k7".into(), "s7".into(), &settings).unwrap();
        assert_eq!(decoded.app, app);
        assert!(decoded.unknown.is_empty());
    }

    #[test]
    fn defaults_fill_missing_settings_and_unknown_ones_are_ignored() {
        let decoded = decode(
            "1".into(),
            "k".into(),
            "s".into(),
            r#"{"enabled": false, "from_the_future": 1, "secret": "ignored"}"#,
        )
        .unwrap();
        let mut expected = App::new("1", "k", "s");
        expected.enabled = false;
        assert_eq!(decoded.app, expected);
        assert_eq!(decoded.unknown, vec!["from_the_future".to_owned()]);
    }

    #[test]
    fn malformed_rows_are_errors() {
        for settings in [
            "",
            "not json",
            "[]",
            "null",
            r#"{"enabled": "yes"}"#,
            r#"{"max_client_events_per_second": 0}"#,
            r#"{"webhooks": [{"url": "ftp://x"}]}"#,
            r#"{"max_connections": -1}"#,
        ] {
            assert!(
                decode("1".into(), "k".into(), "s".into(), settings).is_err(),
                "{settings:?} is refused"
            );
        }
        assert!(decode("".into(), "k".into(), "s".into(), "{}").is_err());
        assert!(decode("1".into(), "k".into(), "".into(), "{}").is_err());
    }
}
