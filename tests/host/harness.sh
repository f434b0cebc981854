#!/bin/bash
# The guest's side of `cargo xtask host` (installed as /usr/local/sbin/psmon-host,
# run by psmon-host.service once the guest has booted): mounts the second disk
# (the payload: the RPMs and the scenario), runs its run.sh as root with its
# output on the second serial port, which the host streams, and powers the
# guest off — or reboots it when run.sh exits with 100, so that a scenario
# can see a boot through (the count of boots is PSMON_HOST_BOOT).
set -u
port=/dev/ttyS1
stty -F "$port" raw -echo 115200 2>/dev/null
exec >"$port" 2>&1
# /mnt (mnt_t): where the policy lets mount mount things.
payload=/mnt
mkdir -p /var/lib/psmon-host
mountpoint -q "$payload" || mount -t ext4 /dev/vdb "$payload" || dmesg | grep -i -e avc -e vdb
boot=$(($(cat /var/lib/psmon-host/boots 2>/dev/null || echo 0) + 1))
echo "$boot" > /var/lib/psmon-host/boots
export PSMON_HOST_BOOT=$boot PSMON_HOST_PAYLOAD=$payload
echo "psmon-host: boot $boot, $(uname -r), SELinux $(getenforce), up $(cut -d' ' -f1 /proc/uptime) s"
cd "$payload" && bash ./run.sh
rc=$?
if [ "$rc" = 100 ]; then
    echo "psmon-host: rebooting"
    systemctl reboot
    exit 0
fi
echo "PSMON-HOST-EXIT $rc"
sync
systemctl poweroff
