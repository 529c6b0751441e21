# The matrix's second boot of the same disk.
. /lab/lib.sh
scenario reboot /lab/reboot.sh
