# Sourced by the benchmark scripts and .ci/run: installs, from Debian's
# packages, the tools a script needs that this machine lacks.
#
#   need_packages COMMAND=PACKAGE...
need_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
    done
    install_packages "${missing[@]}"
}

# Installs Debian packages, if any are named.
install_packages() {
    [ $# -gt 0 ] || return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@"
}

# A python3 that makes virtual environments with pip in them (Debian keeps
# ensurepip out of python3, in python3-venv).
need_python_venv() {
    python3 -c 'import ensurepip, venv' 2>/dev/null || install_packages python3 python3-venv
}
