//! The durable registry: `<state>/registry.json`, replaced atomically on every change (a
//! temporary file beside it, written and fsynced, renamed over it, the directory fsynced), so a
//! crash at any point leaves either the previous state or the new one, never a mix. The
//! directory is locked while a tollgate-registry uses it: two writers would lose each other's
//! changes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::beans::State;

/// The state file, in the state directory.
pub const STATE_FILE: &str = "registry.json";
const TEMP_FILE: &str = ".registry.json.tmp";
const LOCK_FILE: &str = ".lock";

pub struct Store {
    dir: PathBuf,
    /// Held (locked) while this store is open.
    _lock: File,
}

impl Store {
    /// Opens (creating it if needed) and locks the state directory; returns the stored state,
    /// `None` when nothing has been stored yet. A state file that cannot be read is an error:
    /// starting empty would retire every API on the next change.
    pub fn open(dir: &Path) -> Result<(Store, Option<State>), String> {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        lock.try_lock().map_err(|e| {
            format!(
                "{}: in use by another tollgate-registry ({e}); one process per state directory",
                dir.display()
            )
        })?;
        // What a crash in the middle of a save left behind; the state file itself is whole.
        let _ = fs::remove_file(dir.join(TEMP_FILE));
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => Some(parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok((
            Store {
                dir: dir.to_path_buf(),
                _lock: lock,
            },
            state,
        ))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Replaces the stored state atomically and durably.
    pub fn save(&self, state: &State) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(&document(state))
            .map_err(|e| format!("serialising the state: {e}"))?;
        let tmp = self.dir.join(TEMP_FILE);
        let path = self.path();
        let write = |tmp: &Path| -> std::io::Result<()> {
            // API keys are in it: readable by its owner only.
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(tmp)?;
            file.write_all(&text)?;
            file.write_all(b"\n")?;
            file.sync_all()
        };
        write(&tmp).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        fs::rename(&tmp, &path).map_err(|e| format!("renaming into {}: {e}", path.display()))?;
        // The rename itself is durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", self.dir.display()))
    }
}

fn document(state: &State) -> Value {
    json!({
        "savedBy": concat!("tollgate-registry ", env!("CARGO_PKG_VERSION")),
        "apis": state.apis.values().collect::<Vec<_>>(),
        "clients": state.clients.values().collect::<Vec<_>>(),
    })
}

fn parse(bytes: &[u8]) -> Result<State, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let map: &Map<String, Value> = value
        .as_object()
        .ok_or("expected an object with apis and clients")?;
    State::from_registry(map).map_err(|problems| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beans::Change;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tollgate-registry-store-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn state() -> State {
        State::default()
            .apply(&Change::Publish(serde_json::json!({
                "organizationId": "o", "apiId": "a", "version": "1", "endpoint": "http://h:1/"
            })))
            .unwrap()
    }

    #[test]
    fn a_saved_state_is_there_when_the_store_is_opened_again() {
        let d = dir("roundtrip");
        {
            let (store, before) = Store::open(&d).unwrap();
            assert!(before.is_none());
            store.save(&state()).unwrap();
        }
        let (_, after) = Store::open(&d).unwrap();
        assert_eq!(after, Some(state()));
    }

    #[test]
    fn a_save_cut_short_by_a_crash_leaves_the_previous_state() {
        let d = dir("crash");
        {
            let (store, _) = Store::open(&d).unwrap();
            store.save(&state()).unwrap();
        }
        // A crash while writing the next state: half a temporary file, never renamed.
        fs::write(d.join(TEMP_FILE), b"{\"apis\": [{\"organiz").unwrap();
        let (_, after) = Store::open(&d).unwrap();
        assert_eq!(after, Some(state()));
        assert!(!d.join(TEMP_FILE).exists());
    }

    #[test]
    fn a_state_file_that_cannot_be_read_stops_the_start() {
        let d = dir("corrupt");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(STATE_FILE), b"{\"apis\": [").unwrap();
        let err = Store::open(&d).err().unwrap();
        assert!(err.contains("not JSON"), "{err}");
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused() {
        let d = dir("locked");
        let _first = Store::open(&d).unwrap();
        let err = Store::open(&d).err().unwrap();
        assert!(err.contains("in use by another tollgate-registry"), "{err}");
    }
}
