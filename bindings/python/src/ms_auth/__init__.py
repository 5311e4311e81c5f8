"""ms-auth for Python: the embedded API-key store and policy engine, over its C ABI v1.

    from ms_auth import Store
    with Store("keys.db") as store:
        created = store.create_key(plan="pro", quota=(10_000, "daily"))
        result = store.check(created.key)
        assert result.ok

Importing this package loads libms_auth ($MS_AUTH_LIB, else a bundled copy, else the repository's
target/release) and refuses a library of another ABI version with LibraryLoadError.

The modules, each importing only those above it: ``_ffi`` (finding, checking and declaring the
library), ``_errors`` (MsAuthError and its codes), ``_args`` (instants, durations, C strings, the
DEFAULT and UNCHANGED markers), ``_check`` (Status, CheckResult, documented bodies), ``_records``
(the admin calls' typed answers), ``_specs`` (quota, rate limit, abuse and idle arguments),
``_native`` (the handle kept alive while calls use it), ``_store`` (Store); then ``_http``, ``wsgi``
and ``asgi`` (the middleware).
"""

from ._ffi import ABI_VERSION, AbiVersionError, LibraryLoadError, library_path, library_version
from ._errors import (
    ErrorCode,
    InternalError,
    InvalidArgumentError,
    KeyNotFoundError,
    MsAuthError,
    StoreNotOpenError,
    StoreUnavailableError,
    last_error,
    status_code_string,
)
from ._args import DEFAULT, UNCHANGED, DurationLike, TimeLike, now_ms
from ._check import ERROR_BODIES, CheckResult, Status
from ._records import (
    AbusePolicy,
    AuditEvent,
    CreatedKey,
    KeyPage,
    KeyRecord,
    KeyState,
    KeyUsage,
    Plan,
    Policies,
    Quota,
    RateLimit,
    Usage,
    UsageDay,
)
from ._specs import AbuseSpec, Durability, QuotaSpec, RateLimitSpec
from ._store import Store

__version__ = "1.1.0"

__all__ = [
    "ABI_VERSION",
    "AbiVersionError",
    "AbusePolicy",
    "AbuseSpec",
    "AuditEvent",
    "CheckResult",
    "CreatedKey",
    "DEFAULT",
    "Durability",
    "DurationLike",
    "ERROR_BODIES",
    "ErrorCode",
    "InternalError",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "KeyPage",
    "KeyRecord",
    "KeyState",
    "KeyUsage",
    "LibraryLoadError",
    "MsAuthError",
    "Plan",
    "Policies",
    "Quota",
    "QuotaSpec",
    "RateLimit",
    "RateLimitSpec",
    "Status",
    "Store",
    "StoreNotOpenError",
    "StoreUnavailableError",
    "TimeLike",
    "UNCHANGED",
    "Usage",
    "UsageDay",
    "last_error",
    "library_path",
    "library_version",
    "now_ms",
    "status_code_string",
]
