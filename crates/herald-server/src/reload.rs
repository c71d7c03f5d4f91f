//! Reloading the configuration file's apps on SIGHUP.
//!
//! Only the `apps` section (and what derives from it: the apps' webhook targets) is applied to
//! the running node, through the app registry: apps are added, changed in place or removed, and
//! a disabled or removed app's sockets are closed with 4003; an added app's metric series are
//! registered at zero ([`Shared::apply_apps`]). Every other setting needs a
//! restart; a change to one is logged as a warning and ignored. In a cluster each node reloads
//! its own file.
//!
//! Invariant: a file that does not load or validate changes nothing; the running apps stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_core::AppsChanged;

use crate::config::{Config, Overrides};
use crate::state::Shared;

/// Reloads the apps from `file` on every SIGHUP until the broker's background tasks stop.
/// Without a file there is nothing to reload: SIGHUP is logged and otherwise ignored (rather
/// than ending the process, its default). Call it from within the runtime, before serving: the
/// handler is in place when this returns.
pub fn spawn_on_hangup(shared: Arc<Shared>, file: Option<PathBuf>, overrides: Overrides) {
    use tokio::signal::unix::{signal, SignalKind};
    // SIGHUP: the conventional "reread your configuration" signal (nginx, HAProxy...).
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGHUP: no configuration reloads");
            return;
        }
    };
    shared.clone().spawn_background(async move {
        while hangup.recv().await.is_some() {
            // Logged either way: the log is how an operator (and a test) sees the result.
            match &file {
                Some(file) => {
                    let _ = reload(&shared, file, &overrides);
                }
                None if shared.apps().store().kind() != "file" => {
                    let _ = reload(&shared, std::path::Path::new(""), &overrides);
                }
                None => tracing::warn!(
                    "SIGHUP ignored: herald runs without a configuration file (--config)"
                ),
            }
        }
    });
}

/// Loads `file` (with the environment and flags layered as at start-up) and applies its apps.
///
/// # Errors
/// The file does not load or validate; nothing was changed, and the error was logged.
pub fn reload(shared: &Shared, file: &Path, overrides: &Overrides) -> anyhow::Result<AppsChanged> {
    if shared.apps().store().kind() != "file" {
        tracing::warn!(
            kind = shared.apps().store().kind(),
            "SIGHUP: apps come from the database (app_store.url), which every node follows by \
             itself; nothing reloaded"
        );
        return Ok(AppsChanged::default());
    }
    let mut config = match Config::load(Some(file), overrides) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(
                file = %file.display(),
                error = %format!("{err:#}"),
                "configuration reload refused; the running apps stay"
            );
            return Err(err);
        }
    };
    let restart_needed = settings_needing_restart(shared.config(), &config);
    if !restart_needed.is_empty() {
        tracing::warn!(
            keys = %restart_needed.join(", "),
            "configuration reload: only apps are reloaded; these settings need a restart"
        );
    }
    // `webhook_url` is not an apps setting: it stays as it was (and was warned about above).
    config.webhook_url.clone_from(&shared.config().webhook_url);
    if let Some(file_store) = shared.apps().file() {
        file_store.set(config.apps());
    }
    let changed = shared.apply_apps(config.apps());
    tracing::info!(
        added = ?changed.added,
        changed = ?changed.changed,
        removed = ?changed.removed,
        closed_sockets = changed.closed_sockets,
        "configuration reloaded: apps applied"
    );
    Ok(changed)
}

/// Top-level keys, other than `apps`, whose value differs between two configurations.
fn settings_needing_restart(running: &Config, loaded: &Config) -> Vec<String> {
    let table = |config: &Config| match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (running, loaded) = (table(running), table(loaded));
    loaded
        .iter()
        .filter(|(key, value)| key.as_str() != "apps" && running.get(key.as_str()) != Some(value))
        .map(|(key, _)| key.clone())
        .collect()
}
