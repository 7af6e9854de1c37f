# Sourced by scripts/test: `prometheus` and `promtool` for the monitoring tests (alert rule
# unit tests, the live-scrape test). Where either is missing and apt can install packages (as
# root, or through passwordless sudo as on CI runners), Debian's `prometheus` package (it
# includes promtool) is installed, quietly; its service is not started. Otherwise the
# monitoring tests skip with the reason, and fail in CI (CI=true), which must never pass
# without them.
ensure_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    local as_root=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            as_root=(none)
        fi
    fi
    if [ "${as_root[0]:-}" = none ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "prometheus/promtool missing and apt-get unavailable (not root?): the monitoring" \
             "tests will skip (and fail with CI=true); install Debian's prometheus package" >&2
        return 0
    fi
    echo "installing Debian's prometheus package (prometheus, promtool) ..." >&2
    local log policy=/usr/sbin/policy-rc.d made_policy=""
    log="$(mktemp)"
    # Install only: a package's service started here would outlive the tests.
    if [ ! -e "$policy" ]; then
        "${as_root[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy" \
            && made_policy=1
    fi
    local apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive
               apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 -qq)
    if ! { "${apt[@]}" install -y --no-install-recommends prometheus ||
           { "${apt[@]}" update &&
             "${apt[@]}" install -y --no-install-recommends prometheus; }; } >"$log" 2>&1; then
        echo "could not install prometheus (the monitoring tests will skip, or fail in CI):" >&2
        tail -n 20 "$log" >&2
    fi
    if [ -n "$made_policy" ]; then
        "${as_root[@]}" rm -f "$policy"
    fi
    rm -f "$log"
    return 0
}
ensure_prometheus
