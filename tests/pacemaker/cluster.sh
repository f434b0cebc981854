#!/bin/bash
# A real two-node Pacemaker + Corosync cluster on this machine, for psmon's
# failover tests: node1 and node2 live in network namespaces psmon-pc1 and
# psmon-pc2 joined by a veth pair (10.98.0.1/30 and 10.98.0.2/30); each
# node has its own /run, /var/lib/pacemaker and /var/lib/corosync (bind
# mounts in a private mount namespace) and its own host name.
#
#   cluster.sh up DIR     start both nodes; a Dummy resource R that prefers
#                         node1 is Started there when this returns
#   cluster.sh node N CMD run CMD on node N (its network, mounts, host name)
#   cluster.sh down DIR   stop both nodes and remove the namespaces
#
# Needs root and Debian's pacemaker, corosync and pacemaker-cli-utils.
set -eu
cmd=${1:?usage: cluster.sh up|down DIR, or node N CMD...}

node_pid() { cat "$DIR/n$1/pacemakerd.pid"; }
any_alive() { for p; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

case "$cmd" in
node)
    N=$2; DIR=${PSMON_CLUSTER_DIR:?}; shift 2
    exec nsenter -t "$(node_pid "$N")" -n -m -u "$@" ;;
up)
    DIR=$2
    mkdir -p "$DIR"; chmod 755 "$DIR"
    for n in 1 2; do ip netns del psmon-pc$n 2>/dev/null || true; done
    ip netns add psmon-pc1; ip netns add psmon-pc2
    ip link add psmon-v1 type veth peer name psmon-v2
    ip link set psmon-v1 netns psmon-pc1; ip link set psmon-v2 netns psmon-pc2
    ip -n psmon-pc1 addr add 10.98.0.1/30 dev psmon-v1
    ip -n psmon-pc2 addr add 10.98.0.2/30 dev psmon-v2
    for n in 1 2; do
        ip -n psmon-pc$n link set lo up
        ip -n psmon-pc$n link set psmon-v$n up
    done
    for n in 1 2; do
        D=$DIR/n$n
        mkdir -p "$D"/run/crm "$D"/run/resource-agents "$D"/lib/cib "$D"/lib/pengine \
                 "$D"/lib/blackbox "$D"/lib/cores "$D"/corolib
        chown -R hacluster:haclient "$D/lib" "$D/run/crm"
        chmod 750 "$D"/lib/*
        # Corosync wants each brace on a line of its own.
        cat > "$D/corosync.conf" <<CONF
totem {
    version: 2
    cluster_name: psmontest
    transport: knet
    crypto_cipher: none
    crypto_hash: none
}
logging {
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: $D/corosync.log
}
quorum {
    provider: corosync_votequorum
    two_node: 1
}
nodelist {
    node {
        name: node1
        nodeid: 1
        ring0_addr: 10.98.0.1
    }
    node {
        name: node2
        nodeid: 2
        ring0_addr: 10.98.0.2
    }
}
CONF
        # The CIB is written before the cluster starts: no fencing, no
        # quorum needed, a short election, and R preferring node1.
        cat > "$D/lib/cib/cib.xml" <<CIB
<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="5" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="options">
        <nvpair id="options-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="options-no-quorum-policy" name="no-quorum-policy" value="ignore"/>
        <nvpair id="options-dc-deadtime" name="dc-deadtime" value="2s"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources>
      <primitive id="R" class="ocf" provider="pacemaker" type="Dummy">
        <operations>
          <op id="R-monitor-5s" name="monitor" interval="5s" timeout="20s"/>
        </operations>
      </primitive>
    </resources>
    <constraints>
      <rsc_location id="R-prefers-node1" rsc="R" node="node1" score="100"/>
    </constraints>
  </configuration>
  <status/>
</cib>
CIB
        chown hacluster:haclient "$D/lib/cib/cib.xml"; chmod 600 "$D/lib/cib/cib.xml"
        ip netns exec psmon-pc$n unshare --mount --uts --propagation private bash -c "
            set -e
            hostname node$n
            mount --bind '$D/run' /run
            mount --bind '$D/lib' /var/lib/pacemaker
            mount --bind '$D/corolib' /var/lib/corosync
            setsid corosync -f -c '$D/corosync.conf' > '$D/corosync.out' 2>&1 < /dev/null &
            echo \$! > '$D/corosync.pid'
            for i in \$(seq 100); do corosync-cfgtool -s > /dev/null 2>&1 && break; sleep 0.1; done
            PCMK_logfile='$D/pacemaker.log' setsid pacemakerd > '$D/pacemakerd.out' 2>&1 < /dev/null &
            echo \$! > '$D/pacemakerd.pid'
        "
    done
    export PSMON_CLUSTER_DIR=$DIR
    for i in $(seq 600); do
        if "$0" node 1 crm_mon -1 --output-as=xml 2>/dev/null \
            | grep -q '<resource id="R"[^>]*role="Started"'; then
            "$0" node 1 crm_mon -1 --output-as=xml | grep -A1 '<resource id="R"' | grep -q 'name="node1"' \
                && { echo "cluster up; R started on node1"; exit 0; }
        fi
        sleep 0.1
    done
    echo "R not started on node1 within 60 s" >&2
    tail -20 "$DIR/n1/pacemaker.log" >&2 || true
    exit 1 ;;
down)
    DIR=$2
    # Pacemaker first (it stops its resources), then Corosync; both nodes at once.
    for daemon in pacemakerd corosync; do
        pids=$(cat "$DIR"/n*/$daemon.pid 2>/dev/null || true)
        [ -n "$pids" ] || continue
        kill -TERM $pids 2>/dev/null || true
        for i in $(seq 300); do any_alive $pids || break; sleep 0.1; done
        kill -KILL $pids 2>/dev/null || true
    done
    for n in 1 2; do ip netns del psmon-pc$n 2>/dev/null || true; done ;;
*)
    echo "usage: cluster.sh up|down DIR, or node N CMD..." >&2; exit 2 ;;
esac
