#!/usr/bin/env bash
# Builds the Debian package from the workspace: /usr/bin/tern, /etc/tern/tern.toml (a
# conffile), the systemd unit, a `tern` system user and /var/lib/tern (made by postinst), and
# the operations guide.
#
#   bash packaging/build-deb.sh                       # release build, package in target/debian
#   bash packaging/build-deb.sh --binary PATH --out DIR   # package an already built binary
#
# Only dpkg-deb is needed (no cargo-deb): the package is a handful of files.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
out="$root/target/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--out DIR]" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    cargo build --release -p tern --manifest-path "$root/Cargo.toml"
    binary="$root/target/release/tern"
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
# Stripped, as Debian ships binaries (debug symbols would make it ten times larger).
install -D -s -m 0755 "$binary" "$stage/usr/bin/tern"
install -D -m 0644 "$root/packaging/tern.toml" "$stage/etc/tern/tern.toml"
install -D -m 0644 "$root/packaging/tern.service" "$stage/lib/systemd/system/tern.service"
install -D -m 0644 "$root/docs/operations.md" "$stage/usr/share/doc/tern/operations.md"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/tern/README.md"
install -d "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$root/packaging/debian/$script" "$stage/DEBIAN/$script"
done
echo "/etc/tern/tern.toml" >"$stage/DEBIAN/conffiles"
size="$(du -sk "$stage" | cut -f1)"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: tern
Version: $version
Architecture: $arch
Maintainer: Tern developers <tern@localhost>
Installed-Size: $size
Depends: adduser, libc6
Section: net
Priority: optional
Description: Kafka-compatible event streaming broker
 Tern speaks the Kafka protocol to existing clients and runs thread-per-core on
 io_uring with a direct-IO log. The package installs the tern command, a systemd
 unit running it as the tern user on /var/lib/tern, and /etc/tern/tern.toml.
CONTROL
mkdir -p "$out"
deb="$out/tern_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group "$stage" "$deb" >/dev/null
echo "$deb"
