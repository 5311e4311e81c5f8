//! The JSON shapes of the C ABI v1 for keys: what comes in (`input`: specs and patches, each checked
//! field by field), what goes out (`record`: a key as every admin answer shows it), and the key list's
//! filter and pages (`list`).

mod input;
mod list;
mod record;

pub(crate) use input::{object_shape, parse_object, parse_shape, quota_field, rate_field};
pub use input::{
    Field, KeyPatch, KeyPatchJson, KeySpec, KeySpecJson, MAX_ACTOR_LEN, MAX_NAME_LEN, MAX_PLAN_LEN, MAX_QUOTA,
    MAX_REASON_LEN,
};
pub use list::{Cursor, KeyFilter, KeyFilterJson, KeyPage, MAX_PAGE};
pub use record::{list_json, KeyRecord, QuotaJson, RateJson, UsageJson};
