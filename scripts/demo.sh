#!/usr/bin/env bash
# The main job end to end on the default store (./ms_auth.db, or $MS_AUTH_DB): build, issue keys with the
# CLI, and check them so that each documented answer is seen once.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
ms_auth() { ./target/release/ms-auth "$@"; }
key_of() { python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])'; }
id_of() { python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'; }
show() { # title, check arguments...
    local title=$1
    shift
    printf '\n== %s\n$ ms-auth check %s\n' "$title" "$(printf '%q ' "$@")"
    ms_auth check "$@" || true
}

echo "Store: ${MS_AUTH_DB:-./ms_auth.db}"
echo "== Issue a key (the plaintext is shown once; only its SHA-256 digest is stored)"
ms_auth key create --name demo --plan pro --quota 3/day --rate 2/s
created=$(ms_auth key create --name demo-quota --plan pro --quota 1/day --rate 100/s --json)
key=$(key_of <<<"$created")
id=$(id_of <<<"$created")

show "Admitted (200)" "$key"
show "Quota exceeded (429)" "$key"
show "Missing (401)" ""
show "Invalid (401)" "ms_live_1a2b3c4d5e6f7g8h9i0j"
expired=$(ms_auth key create --name demo-expired --expires-at 2020-01-01T00:00:00Z --json | key_of)
show "Expired (401)" "$expired"
rated=$(ms_auth key create --name demo-rate --rate 1/min --json | key_of)
ms_auth check "$rated" >/dev/null
show "Rate limited (429)" "$rated"
ms_auth key revoke "$id" --reason demo
show "Revoked (401)" "$key"
printf '\n== Keys in the store\n'
ms_auth key list
