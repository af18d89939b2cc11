# Sourced by run.sh and test.sh: create .venv if missing and install the pinned
# requirements whenever the requirements files change (a hash stamp in .venv).
# Usage: . launch/env.sh requirements.txt [requirements-test.txt]
set -e
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ANKH3_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[env] creating $venv" >&2
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements-$(cd "$root" && cat "$@" requirements.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[env] installing $* into $venv (first run takes about a minute)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $(for f in "$@"; do echo -r "$root/$f"; done)
  touch "$stamp"
fi
. "$venv/bin/activate"
cd "$root"
