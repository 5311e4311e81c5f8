#!/usr/bin/env bash
# manpages.sh BIN OUTDIR VERSION: writes ms-auth.1 and one ms-auth-COMMAND.1 per top-level command of the
# built CLI BIN into OUTDIR, gzipped as Debian installs them. help2man turns each command's --help (clap's
# own text, so the pages cannot drift from the binary) into a page; a group's page (key, plan, fleet,
# policy, ...) also carries the --help of each of its subcommands. The command list is read from
# `ms-auth --help`, so a new command gets its page without an edit here. Dates come from
# SOURCE_DATE_EPOCH (help2man honours it), so a rebuild writes the same pages.
set -euo pipefail
BIN="$(realpath "$1")" OUT="$2" VERSION="$3"
command -v help2man >/dev/null || { echo "manpages.sh needs help2man (apt-get install help2man)" >&2; exit 1; }
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# commands ARGS...: the subcommand names `ms-auth ARGS... --help` lists (clap's "Commands:" block), but help.
commands() {
    "$BIN" "$@" --help | sed -n '/^Commands:$/,/^$/s/^  \([a-z][a-z0-9-]*\) .*/\1/p' | grep -vx help || true
}
# roff_pre: text as a roff no-fill block, so clap's layout survives and no line reads as a request.
roff_pre() {
    echo '.nf'
    sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"
    echo '.fi'
}
# whatis ARGS...: the NAME line's description: the command's one-line about, up to its first period or colon.
whatis() {
    "$BIN" "$@" --help | head -n1 | sed -e 's/[.:;].*//' -e 's/ *$//'
}
# page NAME ARGS...: help2man on a wrapper that runs `ms-auth ARGS...`, with INCLUDE sections added.
page() {
    local name="$1"; shift
    local wrapper="$WORK/$name"
    printf '#!/bin/sh\nexec "%s" %s "$@"\n' "$BIN" "$*" >"$wrapper"
    chmod 0755 "$wrapper"
    help2man --no-info --no-discard-stderr --version-string="$VERSION" --source="ms-auth $VERSION" \
        --section=1 --manual="ms-auth manual" --name="$(whatis "$@")" --include="$WORK/$name.h2m" \
        "$wrapper" >"$WORK/$name.1"
    gzip -9n <"$WORK/$name.1" >"$OUT/$name.1.gz"
}

mapfile -t top < <(commands)
[ ${#top[@]} -gt 0 ] || { echo "manpages.sh: $BIN --help lists no commands" >&2; exit 1; }
see_also=""
for cmd in "${top[@]}"; do
    see_also+="${see_also:+,
}.BR ms-auth-$cmd (1)"
done
{
    echo '[SEE ALSO]'
    echo "$see_also"
} >"$WORK/ms-auth.h2m"
page ms-auth

for cmd in "${top[@]}"; do
    {
        mapfile -t subs < <(commands "$cmd")
        if [ ${#subs[@]} -gt 0 ]; then
            echo '[SUBCOMMANDS]'
            for sub in "${subs[@]}"; do
                echo ".SS \"ms-auth $cmd $sub\""
                "$BIN" "$cmd" "$sub" --help | roff_pre
            done
        fi
        echo '[SEE ALSO]'
        echo '.BR ms-auth (1)'
    } >"$WORK/ms-auth-$cmd.h2m"
    page "ms-auth-$cmd" "$cmd"
done
