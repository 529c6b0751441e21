# Installing a newer version of the package over the running one: the
# service restarts on the new binary, its state and the operator's config
# edits kept, still hardened. The new version's kernel object differs: it
# attaches its probes before the old ones go. Meanwhile something respawns
# labd inside its window every 0.3 s: every respawn, including those while
# no agent runs, is stopped before it runs and seen by one agent or the
# other. Leaves the window open for the reboot check.
set -euo pipefail
. /lab/lib.sh
as_operator stopguard window open labd --reason "across an upgrade and a reboot" --for 2h
before=$(systemctl show -P MainPID stopguard)
generation=$(ls /sys/fs/bpf/stopguard)

# labd runs, and the operator stops it: what starts it next is a respawn.
setsid /usr/local/bin/labd /var/lib/labd/data < /dev/null > /dev/null 2>&1 &
wait_until 30 "the agent to see labd running" status_has '.services[] | select(.name == "labd") | .pid != null'
as_operator kill -TERM "$(stopguard status --json | jq -r '.services[] | select(.name == "labd") | .pid')"
wait_until 30 "the operator's stop" status_has '.services[] | select(.name == "labd") | .state == "stopped_by_operator"'
respawn_loop_start
trap respawn_loop_stop EXIT
wait_until 30 "the first respawn to be frozen" \
    status_has '.services[] | select(.name == "labd") | .frozen | length > 0'

dpkg -i "$1" | cat  # not a terminal: no progress meter on the serial line
[ "$(dpkg-query -W -f '${Version}' stopguard)" = "$(dpkg-deb -f "$1" Version)" ] || fail "the new version is not installed"
check_unit
sleep 2
respawn_loop_stop
[ "$(systemctl show -P MainPID stopguard)" != "$before" ] || fail "the upgrade did not restart the agent"
grep -q 'name = "labd"' /etc/stopguard/stopguard.toml || fail "the operator's config edit was lost"
status_has '.windows[] | select(.service == "labd")' || fail "the window did not survive the upgrade"

# The new object's probes replaced the old ones, which are gone.
[ "$(ls /sys/fs/bpf/stopguard)" != "$generation" ] || fail "the new version adopted the old probes ($generation)"
[ "$(ls /sys/fs/bpf/stopguard | wc -l)" = 1 ] || fail "probes left pinned: $(ls /sys/fs/bpf/stopguard)"
journalctl -u stopguard --no-pager -o cat | grep -q "then older ones \[\"$generation\"\] detached" ||
    fail "the new agent did not say it replaced $generation: $(journalctl -u stopguard --no-pager -o cat | tail -5)"

respawn_loop_check upgrade
echo "upgrade: $(dpkg-query -W -f '${Version}' stopguard) running as $(systemctl show -P MainPID stopguard), window kept"
