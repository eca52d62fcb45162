#!/usr/bin/env bash
# Installs what building the workspace needs from the system, when it is missing (Debian/Ubuntu,
# as root): a C toolchain, pkg-config, git, and for the etcd client (cnm-store's cluster store,
# built into cnmd) `protoc` with the well-known types its .proto files import
# (google/protobuf/*.proto). Extra Debian packages to ensure may follow as arguments, each as
# PACKAGE:COMMAND (installed unless COMMAND is on PATH). Used by .ci/run and scripts/quickstart.sh;
# the tests' own tools are installed by `cargo xtask test` (xtask/src/packages.rs).
set -euo pipefail

packages=()
command -v cc >/dev/null 2>&1 || packages+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || packages+=(pkg-config)
command -v git >/dev/null 2>&1 || packages+=(git)
command -v protoc >/dev/null 2>&1 || packages+=(protobuf-compiler)
[[ -f /usr/include/google/protobuf/descriptor.proto ]] || packages+=(libprotobuf-dev)
for extra in "$@"; do
    command -v "${extra#*:}" >/dev/null 2>&1 || packages+=("${extra%%:*}")
done

if ((${#packages[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "build-deps: missing ${packages[*]} and not root: cannot install them" >&2
        exit 1
    fi
    echo "build-deps: installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${packages[@]}"
fi
