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

cat > /run/lab-upgrade-loop.sh <<'LOOP'
while :; do
    /usr/local/bin/labd /var/lib/labd/data &
    echo "$! $(date +%s%N)" >> /run/lab-upgrade-pids
    sleep 0.3
done
LOOP
: > /run/lab-upgrade-pids
setsid bash /run/lab-upgrade-loop.sh < /dev/null > /dev/null 2>&1 &
trap 'pkill -f lab-upgrade-loop || true' EXIT
wait_until 30 "the first respawn to be frozen" \
    status_has '.services[] | select(.name == "labd") | .frozen | length > 0'

dpkg -i "$1" | cat  # not a terminal: no progress meter on the serial line
[ "$(dpkg-query -W -f '${Version}' stopguard)" = "$(dpkg-deb -f "$1" Version)" ] || fail "the new version is not installed"
check_unit
sleep 2
pkill -f lab-upgrade-loop
sleep 1
[ "$(systemctl show -P MainPID stopguard)" != "$before" ] || fail "the upgrade did not restart the agent"
grep -q 'name = "labd"' /etc/stopguard/stopguard.toml || fail "the operator's config edit was lost"
status_has '.windows[] | select(.service == "labd")' || fail "the window did not survive the upgrade"

# The new object's probes replaced the old ones, which are gone.
[ "$(ls /sys/fs/bpf/stopguard)" != "$generation" ] || fail "the new version adopted the old probes ($generation)"
[ "$(ls /sys/fs/bpf/stopguard | wc -l)" = 1 ] || fail "probes left pinned: $(ls /sys/fs/bpf/stopguard)"
journalctl -u stopguard --no-pager -o cat | grep -q "then older ones \[\"$generation\"\] detached" ||
    fail "the new agent did not say it replaced $generation: $(journalctl -u stopguard --no-pager -o cat | tail -5)"

# When no agent ran: from the old agent's last line to the new one's ready.
journal_ns() {
    journalctl -u stopguard -o json --no-pager |
        jq -r --arg text "$1" 'select(.MESSAGE | type == "string" and contains($text)) | .__REALTIME_TIMESTAMP' |
        tail -1 | sed 's/$/000/'
}
down=$(journal_ns "stopguard stopped")
up=$(journal_ns "stopguard running")
[ -n "$down" ] && [ -n "$up" ] || fail "no stop and start of the agent in the journal"
audit=$(stopguard audit --json --service labd)
total=0 in_gap=0 worst_ms=0
while read -r pid spawned; do
    total=$((total + 1))
    ! grep -q "^start $pid\$" /var/lib/labd/data || fail "respawn $pid ran (spawned at $spawned)"
    seen=$(jq -r --argjson pid "$pid" \
        'select((.finding == "respawn" and .started.pid == $pid) or (.event == "respawn_retry_killed" and .pid == $pid)) | .at' \
        <<< "$audit" | head -1)
    [ -n "$seen" ] || fail "respawn $pid (spawned at $spawned) was seen by no agent"
    if [ "$spawned" -gt "$down" ] && [ "$spawned" -lt "$up" ]; then
        in_gap=$((in_gap + 1))
        wait_ms=$((($(date -d "$seen" +%s%N) - spawned) / 1000000))
        [ "$wait_ms" -gt "$worst_ms" ] && worst_ms=$wait_ms
    fi
done < /run/lab-upgrade-pids
[ "$in_gap" -gt 0 ] || fail "no respawn happened while no agent ran (down $down, up $up): the check proves nothing"
echo "LAB-GAP upgrade: $in_gap of $total respawns while no agent ran; the longest waited $worst_ms ms to be seen"
echo "upgrade: $(dpkg-query -W -f '${Version}' stopguard) running as $(systemctl show -P MainPID stopguard), window kept, $total respawns stopped, none ran"
