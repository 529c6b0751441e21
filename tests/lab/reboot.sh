# After a reboot: the agent is up before the databases, hardened, on its
# state from before.
set -euo pipefail
. /lab/lib.sh
check_unit
status_has '.windows[] | select(.service == "labd")' || fail "the window did not survive the reboot"
version=$(ls /etc/postgresql | sort -n | tail -1)
wait_until 120 "PostgreSQL to start" systemctl is-active --quiet "postgresql@$version-main"
ready=$(systemctl show -P ActiveEnterTimestampMonotonic stopguard)
database=$(systemctl show -P ExecMainStartTimestampMonotonic "postgresql@$version-main")
[ "$ready" -lt "$database" ] || fail "PostgreSQL started (at $database µs) before stopguard was ready ($ready µs)"
echo "reboot: stopguard ready $(((database - ready) / 1000)) ms before postgresql@$version-main started"
