# Installing a newer version of the package over the running one: the
# service restarts on the new binary, its state and the operator's config
# edits kept, still hardened. Leaves a window open for the reboot check.
set -euo pipefail
. /lab/lib.sh
as_operator stopguard window open labd --reason "across an upgrade and a reboot" --for 2h
before=$(systemctl show -P MainPID stopguard)
dpkg -i "$1" | cat  # not a terminal: no progress meter on the serial line
[ "$(dpkg-query -W -f '${Version}' stopguard)" = "$(dpkg-deb -f "$1" Version)" ] || fail "the new version is not installed"
check_unit
[ "$(systemctl show -P MainPID stopguard)" != "$before" ] || fail "the upgrade did not restart the agent"
grep -q 'name = "labd"' /etc/stopguard/stopguard.toml || fail "the operator's config edit was lost"
status_has '.windows[] | select(.service == "labd")' || fail "the window did not survive the upgrade"
echo "upgrade: $(dpkg-query -W -f '${Version}' stopguard) running as $(systemctl show -P MainPID stopguard), window kept"
