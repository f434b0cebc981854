#!/bin/bash
# The guest's entry point on the payload disk (run by harness.sh at every
# boot): on the first boot installs psmon from its RPM as an administrator
# does — with its scriptlets, which reload systemd, load the SELinux module
# and label psmon's files — then runs script.sh. Debian's rpm keeps its own
# database and knows none of Debian's packages, hence --nodeps.
set -u
# As an administrator: unconfined_t (systemd starts the harness in
# initrc_t, where running /usr/sbin/psmon would enter psmon_t).
if [ "$(id -Z | cut -d: -f3)" != unconfined_t ] && runcon -t unconfined_t -- true; then
    exec runcon -t unconfined_t -- bash "$0" "$@"
fi
if [ "${PSMON_HOST_BOOT:-1}" = 1 ]; then
    rpm --initdb 2>/dev/null
    echo "psmon-host: rpm -i --nodeps psmon.rpm"
    rpm -i --nodeps ./psmon.rpm || { echo "psmon-host: installing the RPM failed"; exit 1; }
fi
exec bash ./script.sh
