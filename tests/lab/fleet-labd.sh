# fleet-labd.sh: labd (the suite's daemon) under runit's runsv on this fleet
# lab guest, watched by its agent; waits until the agent sees it running.
set -euo pipefail
. /lab/lib.sh
start_labd
echo "$(hostname): labd $LABD_PID under runsv, watched"
