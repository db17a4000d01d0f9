# Sourced by .ci/test: the Python programs the WebSocket tests run, in a
# virtual environment under target/ (idempotent: made once, packages
# installed only when their pinned versions are missing):
# - kosoku, a runner of the Autobahn testsuite's cases (the Python 2
#   suite itself does not install here), for tests/autobahn.rs;
# - Playwright for Python, driving the system's Chromium (Debian
#   `chromium`), for tests/browser.rs.
# Exports IOCORE_PYTHON, the interpreter the tests run them with.

python_tools() {
    local venv="$PWD/target/ci-python" want="kosoku==0.1.0 playwright==1.65.3"
    if ! "$venv/bin/python" -c 'import venv' >/dev/null 2>&1; then
        python3 -m venv "$venv" >/dev/null 2>&1 || {
            apt_install --no-install-recommends python3-venv && python3 -m venv "$venv"
        } || { echo "FAILED: cannot make a Python virtual environment (python3-venv)" >&2; return 1; }
    fi
    if ! "$venv/bin/python" - $want <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (a.split("==") for a in sys.argv[1:])))
PY
    then
        echo "== installing $want (PyPI) into target/ci-python"
        "$venv/bin/pip" install -q --disable-pip-version-check $want \
            || { echo "FAILED: pip could not install $want" >&2; return 1; }
    fi
    export IOCORE_PYTHON="$venv/bin/python"
}
