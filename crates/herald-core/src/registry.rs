//! The app registry: which apps this node serves, changeable while it runs.
//!
//! Readers (every WebSocket upgrade, HTTP API request and bus message) take a snapshot: a read
//! lock held only to clone an `Arc`, then a hash lookup. Writers build a new snapshot and swap
//! it in, one writer at a time. An app keeps its `AppState` (channels, members, sockets) across
//! changes of its settings; only its id is its identity.
//!
//! Invariant: a disabled or removed app has no open connection on this node once the change
//! returns: each of its sockets has been told to close with 4003.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::app::App;
use crate::app_state::AppState;

/// The apps of one node, by id and by key.
#[derive(Debug, Default)]
pub struct AppRegistry {
    snapshot: RwLock<Arc<Apps>>,
    /// Serializes writers, so that a change reads and replaces the snapshot atomically.
    writer: Mutex<()>,
    /// The node's id, which each app's monitor stamps on its records.
    node: u64,
}

#[derive(Debug, Default, Clone)]
struct Apps {
    by_id: HashMap<String, Arc<AppState>>,
    by_key: HashMap<String, Arc<AppState>>,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    KeyTaken { key: String, owner: String },
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::KeyTaken { key, owner } => {
                write!(f, "app key {key:?} is already used by app {owner:?}")
            }
        }
    }
}

impl std::error::Error for RegistryError {}

/// What a change did, app ids sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppsChanged {
    pub added: Vec<String>,
    /// Apps whose settings changed (a secret, a limit, enabled, webhooks...).
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Sockets told to close with 4003 because their app was disabled or removed.
    pub closed_sockets: usize,
}

impl AppsChanged {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl AppRegistry {
    /// An empty registry of node `node`.
    pub fn for_node(node: u64) -> AppRegistry {
        AppRegistry {
            node,
            ..AppRegistry::default()
        }
    }

    fn snapshot(&self) -> Arc<Apps> {
        self.snapshot.read().clone()
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<AppState>> {
        self.snapshot.read().by_id.get(id).cloned()
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<AppState>> {
        self.snapshot.read().by_key.get(key).cloned()
    }

    pub fn all(&self) -> Vec<Arc<AppState>> {
        let mut apps: Vec<_> = self.snapshot().by_id.values().cloned().collect();
        apps.sort_by(|a, b| a.id().cmp(b.id()));
        apps
    }

    /// Adds an app, or changes the settings of the app with the same id.
    ///
    /// # Errors
    /// `KeyTaken` when another app already has this key.
    pub fn put(&self, app: App) -> Result<AppsChanged, RegistryError> {
        let _writer = self.writer.lock();
        let current = self.snapshot();
        if let Some(owner) = current.by_key.get(&app.key) {
            if owner.id() != app.id {
                return Err(RegistryError::KeyTaken {
                    key: app.key,
                    owner: owner.id().to_owned(),
                });
            }
        }
        let mut next = (*current).clone();
        let mut res = AppsChanged::default();
        put(&mut next, app, &mut res, self.node);
        *self.snapshot.write() = Arc::new(next);
        Ok(res)
    }

    /// Removes an app, closing its sockets with 4003; `None` when there was no such app.
    pub fn remove(&self, id: &str) -> Option<AppsChanged> {
        let _writer = self.writer.lock();
        let mut next = (*self.snapshot()).clone();
        let state = next.by_id.remove(id)?;
        next.by_key.retain(|_, s| s.id() != id);
        *self.snapshot.write() = Arc::new(next);
        Some(AppsChanged {
            removed: vec![id.to_owned()],
            closed_sockets: state.retire(),
            ..AppsChanged::default()
        })
    }

    /// Makes the registry serve exactly `apps` (ids and keys unique, as configuration validates):
    /// new ids are added, known ones changed in place, missing ones removed.
    pub fn replace(&self, apps: Vec<App>) -> AppsChanged {
        let _writer = self.writer.lock();
        let node = self.node;
        let current = self.snapshot();
        let mut next = Apps::default();
        let mut res = AppsChanged::default();
        for app in apps {
            match current.by_id.get(&app.id) {
                Some(state) => {
                    next.by_id.insert(app.id.clone(), state.clone());
                    next.by_key.insert(app.key.clone(), state.clone());
                    if *state.app() != app {
                        res.changed.push(app.id.clone());
                        res.closed_sockets += state.set_app(app);
                    }
                }
                None => {
                    res.added.push(app.id.clone());
                    let state = Arc::new(AppState::new(app, node));
                    next.by_id.insert(state.id().to_owned(), state.clone());
                    next.by_key.insert(state.app().key.clone(), state);
                }
            }
        }
        let gone: Vec<Arc<AppState>> = current
            .by_id
            .values()
            .filter(|s| !next.by_id.contains_key(s.id()))
            .cloned()
            .collect();
        *self.snapshot.write() = Arc::new(next);
        for state in gone {
            res.removed.push(state.id().to_owned());
            res.closed_sockets += state.retire();
        }
        res.added.sort();
        res.changed.sort();
        res.removed.sort();
        res
    }
}

fn put(apps: &mut Apps, app: App, res: &mut AppsChanged, node: u64) {
    match apps.by_id.get(&app.id).cloned() {
        Some(state) => {
            let old_key = state.app().key.clone();
            if *state.app() == app {
                return;
            }
            apps.by_key.remove(&old_key);
            apps.by_key.insert(app.key.clone(), state.clone());
            res.changed.push(app.id.clone());
            res.closed_sockets += state.set_app(app);
        }
        None => {
            res.added.push(app.id.clone());
            let state = Arc::new(AppState::new(app, node));
            apps.by_key.insert(state.app().key.clone(), state.clone());
            apps.by_id.insert(state.id().to_owned(), state);
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::SocketId;

    use super::*;
    use crate::outbox::Outbox;

    fn app(id: &str, key: &str) -> App {
        App::new(id, key, format!("secret-{id}"))
    }

    fn closing(outbox: &Outbox) -> Option<u16> {
        outbox.take().1.map(|close| close.code.code())
    }

    #[test]
    fn replace_adds_changes_in_place_and_removes() {
        let registry = AppRegistry::default();
        registry.replace(vec![app("1", "k1"), app("2", "k2")]);
        let one = registry.by_id("1").unwrap();
        let mut rotated = app("1", "k1");
        rotated.secret = "new".into();
        let res = registry.replace(vec![rotated, app("3", "k3")]);
        assert_eq!(res.added, ["3"]);
        assert_eq!(res.changed, ["1"]);
        assert_eq!(res.removed, ["2"]);
        assert!(
            Arc::ptr_eq(&one, &registry.by_id("1").unwrap()),
            "state is kept"
        );
        assert_eq!(
            one.app().secret.expose(),
            "new",
            "read per call, not cached"
        );
        assert!(registry.by_key("k2").is_none());
        assert!(registry.by_key("k3").is_some());
        let same = vec![app("1", "k1"), app("3", "k3")];
        assert_eq!(registry.replace(same.clone()).changed, ["1"]);
        assert!(registry.replace(same).is_empty());
    }

    #[test]
    fn disabling_or_removing_an_app_closes_its_sockets_with_4003() {
        let registry = AppRegistry::default();
        registry.replace(vec![app("1", "k1"), app("2", "k2"), app("3", "k3")]);
        let outbox = |id: &str, seq| {
            let outbox = Outbox::new(1 << 20);
            let socket = SocketId { node: 1, seq };
            registry
                .by_id(id)
                .unwrap()
                .add_connection(socket, &outbox)
                .unwrap();
            outbox
        };
        let (one, two, three) = (outbox("1", 1), outbox("2", 2), outbox("3", 3));
        let mut disabled = app("1", "k1");
        disabled.enabled = false;
        let res = registry.replace(vec![disabled, app("3", "k3")]);
        assert_eq!(res.closed_sockets, 2);
        assert_eq!(closing(&one), Some(4003));
        assert_eq!(closing(&two), Some(4003));
        assert_eq!(closing(&three), None);
        assert_eq!(registry.remove("3").unwrap().closed_sockets, 1);
        assert_eq!(closing(&three), Some(4003));
        assert!(registry.remove("3").is_none());
    }

    #[test]
    fn put_refuses_a_key_of_another_app_and_moves_its_own() {
        let registry = AppRegistry::default();
        registry.put(app("1", "k1")).unwrap();
        assert_eq!(
            registry.put(app("2", "k1")),
            Err(RegistryError::KeyTaken {
                key: "k1".into(),
                owner: "1".into()
            })
        );
        assert_eq!(registry.put(app("1", "k9")).unwrap().changed, ["1"]);
        assert!(registry.by_key("k1").is_none());
        assert_eq!(registry.by_key("k9").unwrap().id(), "1");
        assert!(registry.put(app("1", "k9")).unwrap().is_empty());
    }
}
