//! ms-auth: an embedded, single-file API-key store and policy engine.
//!
//! One module per concept:
//! - [`status`]: the decision and error codes of the C ABI v1 and their documented texts;
//! - [`key`]: key format, checksums, digests;
//! - [`period`]: calendar quota periods in UTC;
//! - [`gcra`]: the rate limiter;
//! - [`policy`]: the pure decision (record + counters + now → decision), no I/O;
//! - [`key_state`]: a key's state as every view shows it (record + now → active, revoked (rotated)...), no I/O;
//! - [`headers`]: the answer's Retry-After and RateLimit fields (decision + windows + now → lines), no I/O;
//! - [`counters`]: the state shared by every process (key index, policies, quota counts, rate buckets);
//! - [`cli_values`]: the CLI's values (`10000/day`, `60/min`, `30d`, RFC 3339), pure parsers;
//! - [`spec`]: key specs, patches and records as JSON;
//! - [`text`]: what names, reasons and actors may hold (no bidi controls), and how stored text is shown;
//! - [`store`]: the SQLite store (schema, migrations, admin) and the check entry point;
//! - [`ffi`]: the C ABI, a thin layer over the Rust API.
//! - [`fleet`]: fleet mode, several hosts kept to one policy through Redis (the only module that knows Redis).
//!
//! Layers, bottom up. A module imports only from layers below its own (never sideways, never up), so
//! the modules draw without circles; `tests/layers.rs` reads this list and fails on an upward import.
//! 1. `status`
//! 2. `error`
//! 3. `key`, `period`, `text`
//! 4. `gcra`
//! 5. `policy`
//! 6. `key_state`, `headers`, `cli_values`
//! 7. `spec`
//! 8. `counters`
//! 9. `store` (only it knows SQL)
//! 10. `fleet` (only it knows Redis)
//! 11. `ffi` (the C ABI)
//! 12. `src/bin` (the `ms-auth` command, which uses the library as `ms_auth::`)

pub mod cli_values;
pub mod counters;
pub mod error;
pub mod ffi;
pub mod fleet;
pub mod gcra;
pub mod headers;
pub mod key;
pub mod key_state;
pub mod period;
pub mod policy;
pub mod spec;
pub mod status;
pub mod store;
pub mod text;

pub use error::{Error, Result};
pub use policy::Decision;
pub use spec::{KeyFilter, KeyPatch, KeyRecord, KeySpec};
pub use status::Status;
pub use store::{Created, Store, StoreOptions};
