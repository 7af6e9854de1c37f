# Sourced by scripts/test and scripts/demo: a Python 3.11 virtualenv in .venv with stagesync
# installed (editable, with the test extras), reinstalled only when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

find_python() {
    for candidate in python3.11 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "stagesync needs Python 3.11 (python3.11 on PATH)" >&2
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    "$(find_python)" -m venv "$VENV"
fi
STAMP="$VENV/.stagesync-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    # pip's own output (warnings included) goes to a log: shown only when the install fails.
    LOG="$VENV/install.log"
    echo "installing stagesync and its dependencies into .venv (a few minutes; log: $LOG) ..." >&2
    if ! { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip &&
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]"; } \
        >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "installation failed: see $LOG" >&2
        exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
