//! What docs/security.md promises about the files a store creates and the secrets it holds.
//! One test per binary process on purpose: the first sets the process umask to 0, so that nothing but
//! the store's own modes can make its files private.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ms_auth::store::AuditFilter;
use ms_auth::{KeySpec, Store};

const NOW: i64 = 1_800_000_000_000;
const KEY: &str = "imported-secret-key-0123456789";

/// Every file in `dir`: name, mode bits, owner.
fn files(dir: &Path) -> Vec<(String, u32, u32)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            (e.file_name().to_string_lossy().into_owned(), m.permissions().mode() & 0o7777, m.uid())
        })
        .collect();
    out.sort();
    out
}

/// Everything a store's life creates: keys, checks, flushes, a rotation, a growth of the counters file
/// (a new store has room for 4096 keys).
fn exercise(db: &Path) -> String {
    let store = Store::open(db).unwrap();
    let created = store.create_key(&KeySpec::from_json(&format!(r#"{{"key": "{KEY}"}}"#)).unwrap(), NOW).unwrap();
    for i in 0..4200 {
        store.create_key(&KeySpec::from_json(&format!(r#"{{"name": "k{i}"}}"#)).unwrap(), NOW).unwrap();
    }
    store.check(Some(KEY.as_bytes()), NOW).unwrap();
    store.rotate_key(&created.record.id, 1000, NOW).unwrap();
    store.flush().unwrap();
    let id = created.record.id.clone();
    store.close().unwrap();
    id
}

#[test]
fn the_store_files_are_private_and_hold_no_key() {
    unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let id = exercise(&db);
    // Reopened while another handle has it open too: the WAL and shared-memory files exist now.
    let store = Store::open(&db).unwrap();
    let listed = files(dir.path());
    let names: Vec<&str> = listed.iter().map(|(n, _, _)| n.as_str()).collect();
    for (name, mode, _) in &listed {
        assert_eq!(*mode, 0o600, "{name} has mode {mode:o}");
        assert!(["keys.db", "keys.db-wal", "keys.db-shm", "keys.db-counters"].contains(&name.as_str()), "{name}");
    }
    assert!(names.contains(&"keys.db") && names.contains(&"keys.db-counters"), "{names:?}");

    // The plaintext key is in no file (only its SHA-256), in no error and in no audit event.
    for (name, _, _) in &listed {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        assert!(!bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()), "the key is in {name}");
    }
    let again = store.create_key(&KeySpec::from_json(&format!(r#"{{"key": "{KEY}"}}"#)).unwrap(), NOW).unwrap_err();
    assert!(!again.message.contains(KEY), "{}", again.message);
    let unknown = format!("{KEY}-unknown");
    let checked = store.check(Some(unknown.as_bytes()), NOW).unwrap();
    assert!(!format!("{checked:?}").contains(KEY));
    let events = store.audit_events(&AuditFilter { key_id: Some(id), since_ms: None, limit: None }).unwrap();
    assert!(!events.is_empty());
    let audit = serde_json::to_string(&events).unwrap();
    assert!(!audit.contains(KEY), "{audit}");
    store.close().unwrap();

    // A root admin (the CLI run with sudo) on a store that a server's user owns: every file it creates or
    // rebuilds keeps that user as owner, or the server could no longer open its own store.
    if unsafe { libc::geteuid() } == 0 {
        let nobody = 65534;
        for (name, _, _) in files(dir.path()) {
            std::os::unix::fs::chown(dir.path().join(&name), Some(nobody), Some(nobody)).unwrap();
        }
        // No counters file and no WAL: the root process builds both.
        std::fs::remove_file(dir.path().join("keys.db-counters")).unwrap();
        let store = Store::open(&db).unwrap();
        store.create_key(&KeySpec::from_json("{}").unwrap(), NOW).unwrap();
        for (name, mode, uid) in files(dir.path()) {
            assert_eq!((mode, uid), (0o600, nobody), "{name} after a root admin");
        }
        store.close().unwrap();
    }
}
