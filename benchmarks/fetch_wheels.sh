#!/usr/bin/env bash
# Download the wheels that the offline GPU image lacks into .whl/ (on a machine with
# internet), for Python 3.12 on manylinux x86_64. benchmarks/gpu_campaign.sh installs them
# with --no-index --no-deps into /tmp/site and puts that on PYTHONPATH.
#
# Usage: benchmarks/fetch_wheels.sh [REQUIREMENT...]
#   With no arguments, the requirements come from benchmarks/wheels.txt (one per line).
#   pip runs with --no-deps: name every dependency the image lacks too. Older wheels of the
#   same projects are removed first, so .whl/ holds one version of each (two would stop the
#   offline install).
# Environment: PYTHON (default: python3), WHEEL_DIR (default: <repo>/.whl)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
DEST=${WHEEL_DIR:-$ROOT/.whl}

REQS=("$@")
if ((${#REQS[@]} == 0)); then
  mapfile -t REQS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$ROOT/benchmarks/wheels.txt")
fi
if ((${#REQS[@]} == 0)); then
  echo "fetch_wheels.sh: nothing to fetch" >&2
  exit 2
fi
mkdir -p "$DEST"

PLATFORMS=()
for tag in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

for req in "${REQS[@]}"; do
  # the project name as wheel files spell it: lowercase, runs of -_. become _
  name=$(printf '%s' "$req" | sed -E 's/[<>=!~;[ ].*//' | tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/_/g')
  find "$DEST" -maxdepth 1 -iname "${name}-*.whl" -delete
done

"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${REQS[@]}"

echo "wheels in $DEST:"
ls -1 "$DEST"
for whl in "$DEST"/*.whl; do
  needs=$(unzip -p "$whl" '*.dist-info/METADATA' 2>/dev/null | grep '^Requires-Dist' | grep -v 'extra ==' || true)
  if [[ -n $needs ]]; then
    printf '%s needs (check the image has them, or add them to wheels.txt):\n%s\n' \
      "$(basename "$whl")" "$needs"
  fi
done
du -ch "$DEST"/*.whl | tail -n 1
