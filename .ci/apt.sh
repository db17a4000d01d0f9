# Sourced by .ci/test and .ci/run: Debian packages, installed idempotently
# (nothing is done for what is already there), waiting for another
# install's apt lock instead of failing.

# apt_install PACKAGE... : installs the packages (quietly).
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    { apt-get -o DPkg::Lock::Timeout=300 update -qq \
        && apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@"; } >/dev/null 2>&1
}

# install_missing "COMMAND:PACKAGE"... : installs the package of each
# command that is not found (without recommends), or fails naming them.
# Services the packages start (where systemd runs) are stopped and
# disabled: the tests start their own instances on free loopback ports.
install_missing() {
    local missing=() services=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || { missing+=("${pair#*:}"); services+=("${pair#*:}"); }
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing ${missing[*]}"
    if ! apt_install --no-install-recommends "${missing[@]}"; then
        echo "FAILED: could not install the Debian packages ${missing[*]} (needs root and apt)" >&2
        return 1
    fi
    if command -v systemctl >/dev/null; then
        for service in "${services[@]}"; do
            systemctl disable --now "$service" >/dev/null 2>&1 || true
        done
    fi
}
