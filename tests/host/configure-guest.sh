#!/bin/bash
# Makes a Debian 12 root (built by mmdebstrap) a host psmon can be tried on:
# configure-guest.sh ROOT. Run by `cargo xtask host` on the build machine,
# before the root is labelled and put on a disk.
#
# The guest boots with SELinux enforcing, systemd as PID 1, and at the end of
# its boot runs /usr/local/sbin/psmon-host, which runs the scenario from the
# second disk and streams its output on the second serial port.
set -euo pipefail
root=${1:?usage: configure-guest.sh ROOT}
here=$(cd "$(dirname "$0")" && pwd)

echo psmon-host > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpsmon-host\n' > "$root/etc/hosts"
printf '/dev/vda / ext4 defaults 0 1\n' > "$root/etc/fstab"
# SELinux: the reference policy, enforcing (the kernel is also told so).
cat > "$root/etc/selinux/config" <<CONF
SELINUX=enforcing
SELINUXTYPE=default
CONF
# Root may log in on the console without a password (to look around when a
# scenario is run by hand with the console attached).
chroot "$root" passwd -d root >/dev/null

# Nothing that would run at a random moment of a scenario, or slow the boot.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    man-db.timer logrotate.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# A journal that survives the reboot of the reboot scenario.
mkdir -p "$root/var/log/journal"
# Cores of crashed processes go to systemd-coredump (its package set this).
# The audit log is what the scenario reads denials from.

install -m 0755 "$here/harness.sh" "$root/usr/local/sbin/psmon-host"
cat > "$root/etc/systemd/system/psmon-host.service" <<UNIT
[Unit]
Description=Runs the psmon-host scenario from the second disk
# After what the scenarios watch (not after multi-user.target, which wants it).
After=basic.target systemd-user-sessions.service auditd.service ssh.service cron.service rsyslog.service redis-server.service nginx.service
ConditionPathExists=/dev/vdb

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/psmon-host
TimeoutStartSec=infinity

[Install]
WantedBy=default.target
UNIT
ln -sf /etc/systemd/system/psmon-host.service "$root/etc/systemd/system/default.target.wants/psmon-host.service" 2>/dev/null || {
    mkdir -p "$root/etc/systemd/system/default.target.wants"
    ln -sf /etc/systemd/system/psmon-host.service "$root/etc/systemd/system/default.target.wants/psmon-host.service"
}
