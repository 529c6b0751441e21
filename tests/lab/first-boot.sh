# The matrix's first boot: every scenario, in order (freeze leaves a frozen
# respawn that restart checks; upgrade leaves a window reboot checks; the
# systemd ones come after the pg_ctl incident, which leaves the cluster as
# systemd started it).
. /lab/lib.sh
scenario install /lab/install-check.sh /lab/stopguard-1.deb
scenario trace /lab/trace.sh
scenario freeze /lab/freeze.sh
scenario restart /lab/restart.sh
scenario postgres /lab/postgres.sh
scenario systemd-monit /lab/systemd-monit.sh
scenario systemd-stop-frozen /lab/systemd-stop-frozen.sh
scenario systemd-redis /lab/systemd-redis.sh
scenario systemd-clusters /lab/systemd-clusters.sh
scenario systemd-explain /lab/systemd-explain.sh
scenario upgrade /lab/upgrade.sh /lab/stopguard-2.deb
