# install.sh DEB: installs the package; done when its service is active.
set -euo pipefail
. /lab/lib.sh
dpkg -i "$1" | cat  # not a terminal: no progress meter on the serial line
wait_until 120 "stopguard.service to be active" systemctl is-active --quiet stopguard
