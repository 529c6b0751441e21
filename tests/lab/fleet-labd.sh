# fleet-labd.sh: labd (the suite's daemon) under runit's runsv on this fleet
# lab guest, watched by its agent; waits until the agent sees it running.
set -euo pipefail
. /lab/lib.sh
install -m 755 /lab/sgdaemon /usr/local/bin/labd
mkdir -p /etc/sv/labd /var/lib/labd
printf '#!/bin/sh\nexec /usr/local/bin/labd /var/lib/labd/data\n' > /etc/sv/labd/run
chmod 755 /etc/sv/labd/run
cat >> /etc/stopguard/stopguard.toml <<'TOML'

[[service]]
name = "labd"
exe = ["/usr/local/bin/labd"]
TOML
systemctl reload stopguard
wait_until 30 "the agent to watch labd" status_has '.services[] | select(.name == "labd")'
setsid runsv /etc/sv/labd < /dev/null > /dev/null 2>&1 &
wait_until 30 "labd to start" grep -qs '^start ' /var/lib/labd/data
pid=$(awk '/^start/ { print $2; exit }' /var/lib/labd/data)
wait_until 30 "the agent to see labd running" status_has ".services[] | select(.name == \"labd\" and .pid == $pid)"
echo "$(hostname): labd $pid under runsv, watched"
