#!/bin/bash
# psmon on a host like its users': run by `cargo xtask host` as root in a
# Debian 12 guest with systemd 252 as PID 1 and SELinux enforcing, psmon
# installed from its RPM (run.sh did, with the scriptlets). Each check prints
# `ok - …` or `not ok - …`; the exit status is the number that failed (100
# asks the harness to reboot the guest and run this again, PSMON_HOST_BOOT=2).
# Numbers are printed as `number: NAME VALUE UNIT`.
set -u
# Failures are counted over both boots.
failed=$(cat /var/lib/psmon-host/failed 2>/dev/null || echo 0)
ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@" >/tmp/check.out 2>&1; then ok "$what"; else
        not_ok "$what"
        sed 's/^/    /' /tmp/check.out | tail -n 20
    fi
}
# wait_for SECONDS COMMAND...: true once COMMAND succeeds, false after SECONDS.
wait_for() {
    local until=$(($(date +%s%N) + $1 * 1000000000))
    shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s%N)" -lt "$until" ] || return 1
        sleep 0.05
    done
}
number() { echo "number: $*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
main_pid() { systemctl show -p MainPID --value "$1"; }
domain() { ps -o label= -p "$1" 2>/dev/null | cut -d: -f3; }
log=/var/opt/HA/PS/log/psmon.log
# The denials of psmon's domain, from the audit log (and the kernel's ring
# buffer, for those before auditd ran).
denials() {
    { grep -h 'avc: *denied' /var/log/audit/audit.log 2>/dev/null; dmesg | grep 'avc: *denied'; } |
        grep 'scontext=system_u:system_r:psmon_t' | sort -u
}
psmon_ready() {
    systemctl is-active -q psmon && systemctl show -p StatusText --value psmon | grep -q ' up'
}
# psmon_replaced PID: ready, and no longer PID.
psmon_replaced() { psmon_ready && [ "$(main_pid psmon)" != "$1" ] && [ "$(main_pid psmon)" != 0 ]; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The units psmon watches here, with what each is.
units="ssh cron rsyslog"

boot1() {
    echo "# installed from the RPM"
    check "the scriptlet loaded the SELinux module" sh -c 'semodule -l | grep -qx psmon'
    check "/usr/sbin/psmon is psmon_exec_t" sh -c 'ls -Z /usr/sbin/psmon | grep -q psmon_exec_t'
    check "/etc/psmon is psmon_conf_t" sh -c 'ls -dZ /etc/psmon | grep -q psmon_conf_t'
    check "systemd knows the unit" systemctl cat psmon.service

    echo "# configured as on a RHEL host, with Debian's names"
    # The seed's pfile_os names RHEL's daemons; here they are Debian's. The
    # administrator edits it (the upgrade must keep the edit).
    # The ssh, cron and rsyslog lines go (units.toml watches them as units);
    # redis gets the shipped kind of line (systemctl start: its unit has
    # Restart=always).
    sed -i -e '/^\/usr\/sbin\/\(rsyslogd\|crond\|sshd\) /d' -e '/^\/sbin\/rpcbind /d' /etc/psmon/pfile_os
    echo '/usr/bin/redis-server     :systemctl start redis-server :86400:3 :continue' >>/etc/psmon/pfile_os
    cp /etc/psmon/pfile_os /var/lib/psmon-host/pfile_os.edited
    cat >/etc/psmon/units.toml <<'TOML'
ipckey = 0x1f000102
[[entry]]
unit = "ssh.service"
[[entry]]
unit = "cron.service"
[[entry]]
unit = "rsyslog.service"
TOML
    # A hang probe on nginx, and a process whose retries run out and fail
    # over (the failover command leaves a mark).
    cp /usr/bin/sleep /usr/local/bin/victim
    cat >/etc/psmon/app.toml <<'TOML'
ipckey = 0x1f000103
[[entry]]
path = "/usr/sbin/nginx"
pidfile = "/run/nginx.pid"
restart = "systemctl restart nginx"
[entry.probe]
kind = "http"
url = "http://127.0.0.1:80/"
interval = 1
timeout = 2
start_grace = 0
kill_grace = 1
[[entry]]
path = "/usr/local/bin/victim"
restart = "/usr/local/bin/victim 100000 >/dev/null 2>&1 &"
retry = 1
action = "switch"
failover = "touch /run/psmon-host-failed-over"
[[entry]]
path = "/usr/local/bin/crasher"
restart = "/usr/local/bin/crasher -c 'import time; time.sleep(100000)' >/dev/null 2>&1 &"
retry = 3
TOML
    /usr/local/bin/victim 100000 >/dev/null 2>&1 &
    # A python with 200 MB of its own memory: a core big enough that
    # systemd-coredump takes a while over it.
    cp "$(readlink -f /usr/bin/python3)" /usr/local/bin/crasher
    (ulimit -c unlimited && exec /usr/local/bin/crasher -c "b = bytearray(b'x') * (200 << 20); import time; time.sleep(100000)" >/dev/null 2>&1) &
    for u in $units redis-server; do
        eval "before_${u//-/_}=\$(domain \$(main_pid $u))"
    done
    check "psmon check accepts the configuration" psmon check /etc/psmon

    echo "# systemctl enable --now psmon"
    local t0
    t0=$(now_ms)
    check "psmon is enabled and started" systemctl enable --now psmon
    if wait_for 60 psmon_ready; then
        ok "psmon is active after READY=1 ($(systemctl show -p StatusText --value psmon))"
        number "start-to-ready $(($(now_ms) - t0)) ms"
    else
        not_ok "psmon is not ready: $(systemctl status psmon 2>&1 | head -n 20)"
        journalctl -u psmon -n 30 --no-pager
    fi
    check "STATUS= names the eBPF source" sh -c 'systemctl status psmon | grep -q "Status: \"source ebpf"'
    check "psmon runs as psmon_t" sh -c "ps -o label= -p $(main_pid psmon) | grep -q ':psmon_t:'"
    check "psmon status answers on the control socket" psmon status
    check "the HTTP endpoint answers /healthz" curl -sf http://127.0.0.1:65000/healthz
    check "the HTTP endpoint answers /metrics" sh -c 'curl -sf http://127.0.0.1:65000/metrics | grep -q psmon_'
    check "the health queue is in shared memory" psmon dump os

    echo "# units as targets: kill -9 the main process"
    for u in $units; do
        local times="" starts_before
        starts_before=$(journalctl -u "$u" -o cat | grep -c "^Started ")
        for _ in 1 2 3 4 5; do
            local old t0
            old=$(main_pid "$u")
            t0=$(now_ms)
            kill -9 "$old"
            if wait_for 30 sh -c "systemctl is-active -q $u && [ \"\$(systemctl show -p MainPID --value $u)\" != $old ] && [ \"\$(systemctl show -p MainPID --value $u)\" != 0 ]"; then
                times="$times $(($(now_ms) - t0))"
            else
                not_ok "$u is not active again after its main process was killed: $(systemctl status "$u" 2>&1 | head -n 12)"
                break
            fi
            sleep 1
        done
        number "kill-to-active-$u $(echo $times | tr ' ' '\n' | median) ms (median of:$times)"
        # The unit has systemd's own Restart=on-failure too: one start per
        # kill, whoever starts it.
        sleep 2
        local starts
        starts=$(($(journalctl -u "$u" -o cat | grep -c "^Started ") - starts_before))
        if [ "$starts" = 5 ]; then ok "$u: started once per kill (5 starts), psmon and systemd's Restart= do not fight"; else
            not_ok "$u: $starts starts for 5 kills"
            journalctl -u "$u" -o short-precise --no-pager | tail -n 20
        fi
        check "$u: Down with its cause in psmon's log" grep -q "Process \['$u.service',pid=[0-9]*\] Down (signal 9" "$log"
        check "$u: restarted through systemctl" grep -q "Try to restart ('$u.service')" "$log"
        check "$u: active with a new MainPID" systemctl is-active -q "$u"
    done

    echo "# a pfile line: systemctl start"
    local old
    old=$(main_pid redis-server)
    kill -9 "$old"
    check "redis-server: restarted by the pfile line's systemctl start" \
        wait_for 30 sh -c "systemctl is-active -q redis-server && [ \$(systemctl show -p MainPID --value redis-server) != $old ]"
    check "redis-server: Down and restart in psmon's log" \
        grep -q "Try to restart ('/usr/bin/redis-server')" "$log"

    echo "# a hang probe: nginx stopped (SIGSTOP) is killed and restarted"
    old=$(cat /run/nginx.pid)
    pkill -STOP -x nginx
    check "nginx: psmon says it hung" wait_for 30 grep -q "Process \['/usr/sbin/nginx',pid=$old\] hung" "$log"
    check "nginx: answers again after the restart" wait_for 30 curl -sf -o /dev/null http://127.0.0.1:80/
    check "nginx: a new master" sh -c "[ \$(cat /run/nginx.pid) != $old ]"

    echo "# retries run out: Retry over, failover command"
    pkill -9 -x victim
    wait_for 10 sh -c 'pgrep -x victim'
    sleep 2
    pkill -9 -x victim
    check "victim: the failover command ran" wait_for 10 test -e /run/psmon-host-failed-over
    check "victim: Retry over in psmon's log" grep -q "Retry over ('/usr/local/bin/victim')" "$log"

    echo "# a crash with a core, taken by systemd-coredump"
    local crashed
    crashed=$(pgrep -x crasher)
    wait_for 60 sh -c "[ \$(awk '/VmRSS/ {print \$2}' /proc/$crashed/status) -gt 200000 ]"
    kill -SEGV "$crashed"
    check "crasher: Down names the dump" \
        wait_for 60 grep -q "Process \['/usr/local/bin/crasher',pid=$crashed\] Down (.*core dumped: coredumpctl info $crashed" "$log"
    check "crasher: restarted" wait_for 30 sh -c "pgrep -x crasher | grep -vqx $crashed"
    check "coredumpctl has the dump" wait_for 180 sh -c "coredumpctl -q info $crashed | grep -q 'Signal: 11'"
    local restarted dumped
    restarted=$(journalctl -u psmon -o short-unix --no-pager | grep -m1 "Try to restart ('/usr/local/bin/crasher')" | cut -d' ' -f1)
    dumped=$(journalctl -o short-unix --no-pager | grep -m1 "Process $crashed (crasher) of user 0 dumped core" | cut -d' ' -f1)
    # systemd sets kernel.core_pipe_limit, so the kernel holds the crashed
    # process until systemd-coredump has taken its dump: its exit, and any
    # restart, comes after that (sooner, a new instance would meet the old
    # one's sockets and files still open).
    number "core_pipe_limit $(cat /proc/sys/kernel/core_pipe_limit)"
    if [ -n "$restarted" ] && [ -n "$dumped" ]; then
        number "dump-logged-to-restart $(awk -v r="$restarted" -v d="$dumped" 'BEGIN {printf "%d", (r - d) * 1000}') ms"
    else
        not_ok "crasher: no restart (${restarted:-?}) or no dump (${dumped:-?}) in the journal"
    fi

    echo "# the journal"
    check "journalctl -u psmon -p warning has the Down messages (warning)" \
        sh -c "journalctl -u psmon -p warning -o cat | grep -q \"Process \\['ssh.service',pid=[0-9]*\\] Down\""
    check "journalctl -u psmon -p err has Retry over (err)" \
        sh -c "journalctl -u psmon -p err -o cat | grep -q \"Retry over ('/usr/local/bin/victim')\""
    check "Down is not at err" \
        sh -c "! journalctl -u psmon -p err -o cat | grep -q \"\\] Down\""
    check "journalctl PSMON_PFILE=units selects that file's messages" \
        sh -c "journalctl PSMON_PFILE=units -o cat | grep -q 'rsyslog.service' && ! journalctl PSMON_PFILE=units -o cat | grep -q victim"
    check "each message is in the journal once" \
        sh -c "[ \$(journalctl -u psmon -o cat | grep -c \"Retry over ('/usr/local/bin/victim')\") = 1 ]"
    check "the journal record has the pid field" \
        sh -c "journalctl -u psmon PSMON_PATH=/usr/local/bin/victim -o verbose | grep -q 'PSMON_PID='"

    echo "# state saved"
    check "the state file is psmon_var_lib_t" sh -c 'ls -Z /var/lib/psmon/ | grep -q psmon_var_lib_t'

    echo "# restarted daemons keep their SELinux domain"
    for u in $units redis-server; do
        eval "b=\$before_${u//-/_}"
        a=$(domain "$(main_pid "$u")")
        if [ -n "$b" ] && [ "$a" = "$b" ]; then ok "$u runs as $a, as when systemd started it"; else not_ok "$u ran as $b, now as $a"; fi
    done

    mkdir -p /root/direct
    printf '[[entry]]\npath = "/usr/bin/redis-server"\nrestart = "redis-server /etc/redis/redis.conf"\n' >/root/direct/direct.toml
    check "psmon check warns that a direct restart command loses the daemon's domain" \
        sh -c 'psmon check /root/direct 2>&1 | grep -q "redis_exec_t.*unconfined_t"'
    # The seed's advice, systemctl restart, fights systemd's own Restart=.
    printf '##### PARAM #####\nIPCKEY = 0x1f000109\n##### PENT #####\n/usr/sbin/sshd :systemctl restart sshd :86400:3 :continue\n' >/root/direct/pfile_seed
    check "psmon check warns about the seed's systemctl restart on a unit that restarts itself" \
        sh -c 'psmon check /root/direct 2>&1 | grep -q "systemd also restarts itself (Restart=on-failure)"'

    echo "# systemd's watchdog on psmon: SIGSTOP"
    psmon status --json >/var/lib/psmon-host/status-before.json
    local stopped
    stopped=$(main_pid psmon)
    kill -STOP "$stopped"
    if wait_for 60 psmon_replaced "$stopped"; then
        ok "systemd restarted the stopped psmon (watchdog)"
        # From systemd's "Watchdog timeout" to its "Started" (READY=1).
        local fired ready
        fired=$(journalctl -u psmon -o short-unix --no-pager | grep -m1 'Watchdog timeout' | cut -d' ' -f1)
        ready=$(journalctl -u psmon -o short-unix --no-pager | awk -v f="$fired" '$1 > f && /Started psmon.service/ {print $1; exit}')
        if [ -n "$fired" ] && [ -n "$ready" ]; then
            number "watchdog-to-ready $(awk -v a="$ready" -v b="$fired" 'BEGIN {printf "%d", (a - b) * 1000}') ms"
        else
            not_ok "no Watchdog timeout then Started in the journal"
            journalctl -u psmon --no-pager | tail -n 20
        fi
    else
        not_ok "psmon is not back after SIGSTOP: $(systemctl status psmon 2>&1 | head -n 12)"
    fi
    psmon status --json >/var/lib/psmon-host/status-after.json
    check "the new psmon took over: no target restarted, budgets kept" python3 - <<'PY'
import json, os
from datetime import datetime, timezone
before = json.load(open("/var/lib/psmon-host/status-before.json"))
after = json.load(open("/var/lib/psmon-host/status-after.json"))
at = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
taken = datetime.fromtimestamp(os.path.getmtime("/var/lib/psmon-host/status-after.json"), timezone.utc)
key = lambda e: (e["pfile"], e["path"])
b = {key(e): e for e in before["entries"]}
bad = []
for e in after["entries"]:
    old = b.get(key(e))
    if old is None:
        continue
    # A restart stops counting once its process stayed up healthy_secs
    # (10 x start_secs by default in TOML, so 10 s here; never in a pfile):
    # the old psmon would have forgiven it by now too.
    since = at(e["since"]) if e["since"] else None
    # (Within a second of that, either is right.)
    up_for = (taken - since).total_seconds() if e["state"] == "up" and since else 0
    forgiving = e["pfile"] != "os"
    expected = {0} if forgiving and up_for >= 11 else {old["attempts"]}
    if forgiving and 9 <= up_for < 11:
        expected.add(0)
    if e["attempts"] not in expected:
        bad.append(f"{key(e)}: attempts {old['attempts']} -> {e['attempts']} (expected {expected})")
    # Kept, to the few ms that rebasing psmon's clock across processes costs.
    if old["state"] == "up" and e["state"] == "up" and abs((since - at(old["since"])).total_seconds()) > 1:
        bad.append(f"{key(e)}: up since {old['since']} -> {e['since']}")
    if old["state"] == "up" and [p["pid"] for p in old["pids"]] != [p["pid"] for p in e["pids"]]:
        bad.append(f"{key(e)}: pids {old['pids']} -> {e['pids']}")
print("\n".join(bad))
raise SystemExit(1 if bad else 0)
PY
    check "the new psmon restarted nothing" sh -c "! journalctl -u psmon _PID=$(main_pid psmon) -o cat | grep -q 'Try to restart'"
    denials_check
    echo "# reboot"
    date +%s > /var/lib/psmon-host/rebooted-at
    return 100
}

denials_check() {
    local d
    d=$(denials)
    if [ -z "$d" ]; then ok "no AVC denial for psmon_t"; else
        not_ok "AVC denials for psmon_t:"
        echo "$d" | sed 's/^/    /'
    fi
    number "avc-denials-psmon_t $(echo -n "$d" | grep -c .)"
}

boot2() {
    echo "# after a reboot"
    if wait_for 60 psmon_ready; then ok "psmon came back at boot ($(systemctl show -p StatusText --value psmon))"; else
        not_ok "psmon is not running after the reboot"
        journalctl -b -u psmon -n 30 --no-pager
    fi
    check "the state from the previous boot was ignored, with the warning" \
        sh -c "journalctl -b -u psmon -o cat | grep -q 'written before the last reboot; starting afresh'"
    # psmon may start before the units it watches: what it starts then
    # joins systemd's own start at boot (the victim, which nothing else
    # starts, it starts).
    for u in $units redis-server nginx; do
        check "$u active after the reboot" systemctl is-active -q "$u"
        check "$u started once at boot" sh -c "[ \$(journalctl -b -u $u -o cat | grep -c '^Started ') = 1 ]"
    done
    check "psmon started the victim, which nothing else starts" wait_for 30 pgrep -x victim
    denials_check

    echo "# the shipped pfile_os lines, by path, with Debian's names (ssh, cron)"
    rm /etc/psmon/units.toml
    sed -i '/^\/usr\/bin\/redis-server /d' /etc/psmon/pfile_os
    cat >>/etc/psmon/pfile_os <<'PFILE'
/usr/sbin/rsyslogd        :systemctl start rsyslog   :86400:3 :continue
/usr/sbin/cron            :systemctl start cron      :86400:3 :continue
/usr/sbin/sshd            :systemctl start ssh       :86400:3 :continue
/usr/bin/redis-server     :systemctl start redis-server :86400:3 :continue
PFILE
    cp /etc/psmon/pfile_os /var/lib/psmon-host/pfile_os.edited
    check "psmon reload takes the pfile" psmon reload
    # Someone is logged in: the session's sshd runs /usr/sbin/sshd too.
    mkdir -p /root/.ssh && chmod 700 /root/.ssh
    ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
    cat /root/.ssh/id_ed25519.pub >>/root/.ssh/authorized_keys
    restorecon -R /root/.ssh
    ssh -o StrictHostKeyChecking=no -o BatchMode=yes root@127.0.0.1 sleep 600 >/dev/null 2>&1 &
    check "a session is open" wait_for 60 sh -c "[ \$(pgrep -c -x sshd) -ge 2 ]"
    for d in sshd:ssh cron:cron rsyslogd:rsyslog; do
        local path=/usr/sbin/${d%%:*} unit=${d#*:} old
        old=$(main_pid "$unit")
        kill -9 "$old"
        check "$path: Down (for sshd while a session runs the same file)" \
            wait_for 30 grep -q "Process \['$path',pid=$old\] Down" "$log"
        check "$unit: active again with a new MainPID" \
            wait_for 60 sh -c "systemctl is-active -q $unit && [ \$(systemctl show -p MainPID --value $unit) != $old ]"
        check "$path: Up again" wait_for 30 grep -q "('$path',pid=$(main_pid "$unit")) Up" "$log"
    done
    check "the session survived the listener's death" sh -c "pgrep -f 'sleep 600' >/dev/null"
    denials_check

    echo "# rpm -U to a newer build"
    local old_psmon
    old_psmon=$(main_pid psmon)
    echo "# edited" >>/etc/psmon/psenv
    check "rpm -U psmon-next.rpm" rpm -U --nodeps ./psmon-next.rpm
    check "psmon was restarted by the upgrade (try-restart) and is ready" wait_for 60 psmon_replaced "$old_psmon"
    check "the new psmon restarted nothing" \
        sh -c "! journalctl -b -u psmon _PID=$(main_pid psmon) -o cat | grep -q 'Try to restart'"
    check "the edited pfile_os was kept" cmp /etc/psmon/pfile_os /var/lib/psmon-host/pfile_os.edited
    check "the edited psenv was kept" grep -q '^# edited' /etc/psmon/psenv
    check "rpm knows the new release" sh -c 'rpm -q psmon | grep -q -- -2\.'
    check "the SELinux module is still loaded" sh -c 'semodule -l | grep -qx psmon'

    echo "# rpm -e"
    local pids
    pids=$(for u in $units redis-server nginx; do main_pid "$u"; done)
    check "rpm -e psmon" rpm -e --nodeps psmon
    check "the service is stopped" sh -c '! systemctl is-active -q psmon'
    check "the service is no longer enabled" sh -c '! systemctl is-enabled -q psmon'
    check "the SELinux module is removed" sh -c '! semodule -l | grep -qx psmon'
    check "the watched processes are left running" \
        sh -c "[ \"$(echo $pids)\" = \"\$(echo \$(for u in $units redis-server nginx; do systemctl show -p MainPID --value \$u; done))\" ]"
    denials_check
}

case "${PSMON_HOST_BOOT:-1}" in
    1)
        boot1
        echo "$failed" >/var/lib/psmon-host/failed
        echo "psmon-host: $failed failed so far; rebooting"
        exit 100
        ;;
    2) boot2 ;;
esac
echo "psmon-host: $failed failed"
echo "--- psmon's log"
tail -n 60 "$log" 2>/dev/null
exit "$failed"
