# Installed from the .deb: enabled, started, hardened, ready.
set -euo pipefail
. /lab/lib.sh
dpkg -i "$1" | cat  # not a terminal: no progress meter on the serial line
check_unit
[ -f /etc/stopguard/stopguard.toml ] || fail "no /etc/stopguard/stopguard.toml"
grep -qx /etc/stopguard/stopguard.toml /var/lib/dpkg/info/stopguard.conffiles ||
    fail "/etc/stopguard/stopguard.toml is not a conffile"
stopguard check-config /etc/stopguard/stopguard.toml
[ -d /var/lib/stopguard ] || fail "no state directory"
[ -S /run/stopguard/stopguard.sock ] || fail "no control socket"
man -w stopguard > /dev/null 2>&1 || [ -f /usr/share/man/man8/stopguard.8.gz ] || fail "no man page"
