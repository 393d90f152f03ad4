#!/usr/bin/env bash
# `make lock`: refresh the lock file from the newest releases that pass the suite.
#
# A scratch venv gets the pinned torch, then the project and its extras with nothing else
# pinned; the suite runs there; only when it passes is the venv's `pip freeze --all`
# written over the lock (atomically). A failing suite leaves the old lock in place.
set -euo pipefail
lock=${1:?usage: scripts/lock.sh LOCKFILE}
: "${PYTHON:=python3}" "${TORCH:?}" "${EXTRAS:?}"
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
"$py" -m pip install -q --upgrade pip setuptools
"$py" -m pip install -q "torch==$TORCH"
"$py" -m pip install -q --no-build-isolation -e "$root[$EXTRAS]"
(cd "$root" && "$py" -m pytest -q -p no:cacheprovider)
{
    echo "# The versions the suite last passed with: Python $("$py" -c 'import platform; print(platform.python_version())'), $(uname -m), torch $TORCH (CPU)."
    echo "# Written by \`make lock\`; \`make venv\` and \`make test\` install through it as constraints."
    "$py" -m pip freeze --all --exclude-editable | grep -v -i '^yocto[-_]fn'
} >"$scratch/lock"
mv "$scratch/lock" "$root/$lock.tmp" && sync "$root/$lock.tmp" && mv "$root/$lock.tmp" "$root/$lock"
echo "wrote $lock"
