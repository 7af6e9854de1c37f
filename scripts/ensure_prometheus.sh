# Sourced by scripts/test: `prometheus` and `promtool` for the monitoring tests (alert rule
# unit tests, the live-scrape test). Where either is missing and apt can install packages (as
# root), Debian's `prometheus` package (it includes promtool) is installed, quietly; its
# service is not started. Otherwise the monitoring tests skip with the reason, and fail in CI
# (CI=true), which must never pass without them.
ensure_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "prometheus/promtool missing and apt-get unavailable (not root?): the monitoring" \
             "tests will skip (and fail with CI=true); install Debian's prometheus package" >&2
        return 0
    fi
    echo "installing Debian's prometheus package (prometheus, promtool) ..." >&2
    local log policy=/usr/sbin/policy-rc.d made_policy=""
    log="$(mktemp)"
    # Install only: a package's service started here would outlive the tests.
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
    fi
    local apt=(apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 -qq)
    if ! { DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
               prometheus || { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
               DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
               prometheus; }; } >"$log" 2>&1; then
        echo "could not install prometheus (the monitoring tests will skip, or fail in CI):" >&2
        tail -n 20 "$log" >&2
    fi
    [ -n "$made_policy" ] && rm -f "$policy"
    rm -f "$log"
    return 0
}
ensure_prometheus
