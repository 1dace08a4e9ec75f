#!/usr/bin/env bash
# Build the Debian package (xmppd_VERSION_ARCH.deb in the repository root) with
# `dpkg-buildpackage -us -uc -b`, in a scratch copy of the tree so that the checkout stays clean
# and nothing lands in its parent directory. Installs the build dependencies with apt-get when
# they are missing (needs root or sudo). PyPI must be reachable: the package bundles its Python
# libraries (debian/README.Debian says why).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! dpkg-checkbuilddeps debian/control >/dev/null 2>&1; then
    echo "build-deb: installing the build dependencies"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        build-essential debhelper dh-virtualenv python3 python3-venv >/dev/null
fi

scratch=$(mktemp -d /tmp/xmppd-deb.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
version=$(dpkg-parsechangelog -S Version)
source_dir=$scratch/xmppd-$version
mkdir "$source_dir"
tar -C "$root" --exclude=./.git --exclude=./.venv --exclude=./dev-data --exclude='./xmppd_*' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' --exclude=./build --exclude=./dist \
    -cf - . | tar -C "$source_dir" -xf -
(cd "$source_dir" && dpkg-buildpackage -us -uc -b)

deb=$(ls "$scratch"/xmppd_"$version"_*.deb)
# The package must work where the build tree never existed: no file in it may name that tree
# (bytecode names its source file, pip records where it installed from).
mkdir "$scratch/check"
dpkg-deb -x "$deb" "$scratch/check"
if grep -r -l -a -F -e "$scratch" -e "debian/xmppd/usr/lib" "$scratch/check" >"$scratch/found"; then
    echo "build-deb: $(basename "$deb") names the build tree in:" >&2
    sed "s|^$scratch/check||" "$scratch/found" >&2
    exit 1
fi
rm -f "$root"/xmppd_*.deb
mv "$deb" "$root/"
echo "build-deb: built $(basename "$deb")"
