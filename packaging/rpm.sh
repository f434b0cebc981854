#!/bin/bash
# Builds psmon's RPM from a built binary: packaging/rpm.sh PSMON_BINARY OUTDIR
# (`cargo xtask rpm` runs it on the static release build). Prints the RPM's
# path last. PSMON_RPM_RELEASE sets the package's release (1 by default).
#
# Needs rpmbuild (Debian's or RHEL's `rpm` package). The SELinux module is
# compiled and shipped when the SELinux policy development files are there
# (/usr/share/selinux/devel/Makefile: selinux-policy-dev on Debian,
# selinux-policy-devel on RHEL).
set -euo pipefail
binary=$(realpath "${1:?usage: rpm.sh PSMON_BINARY OUTDIR}")
out=${2:?usage: rpm.sh PSMON_BINARY OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
release=${PSMON_RPM_RELEASE:-1}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/psmon/Cargo.toml" | head -n 1)

mkdir -p "$out"
out=$(realpath "$out")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/stage

# The files, where RHEL keeps them.
install -D -m 0755 "$binary" "$stage/usr/sbin/psmon"
# Debug information is not shipped (the symbols stay, for backtraces).
strip --strip-debug "$stage/usr/sbin/psmon"
install -D -m 0644 "$root/conf/psagent.conf" "$stage/etc/psmon/psagent.conf"
install -D -m 0644 "$root/conf/psenv" "$stage/etc/psmon/psenv"
install -D -m 0644 "$root/conf/pfile_os" "$stage/etc/psmon/pfile_os"
install -D -m 0644 "$root/conf/example.toml" "$stage/usr/share/doc/psmon/example.toml"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/psmon/README.md"
install -D -m 0644 "$root/conf/prometheus/psmon.rules.yml" "$stage/usr/share/doc/psmon/psmon.rules.yml"
install -D -m 0644 "$root/conf/prometheus/psmon.rules.test.yml" "$stage/usr/share/doc/psmon/psmon.rules.test.yml"
install -D -m 0644 "$root/conf/systemd/psmon.service" "$stage/usr/lib/systemd/system/psmon.service"
install -D -m 0644 "$root/conf/logrotate/psmon" "$stage/etc/logrotate.d/psmon"
install -D -m 0755 "$root/conf/ocf/psmon" "$stage/usr/lib/ocf/resource.d/psmon/psmon"
"$binary" generate --man "$work/man" --completions "$work/completions"
for page in "$work"/man/*.8; do
    gzip -9n < "$page" > "$work/$(basename "$page").gz"
    install -D -m 0644 "$work/$(basename "$page").gz" "$stage/usr/share/man/man8/$(basename "$page").gz"
done
for page in "$root"/man/*.5; do
    gzip -9n < "$page" > "$work/$(basename "$page").gz"
    install -D -m 0644 "$work/$(basename "$page").gz" "$stage/usr/share/man/man5/$(basename "$page").gz"
done
install -D -m 0644 "$work/completions/psmon.bash" "$stage/usr/share/bash-completion/completions/psmon"
install -D -m 0644 "$work/completions/_psmon" "$stage/usr/share/zsh/site-functions/_psmon"
install -D -m 0644 "$work/completions/psmon.fish" "$stage/usr/share/fish/vendor_completions.d/psmon.fish"
selinux=no
if [ -f /usr/share/selinux/devel/Makefile ]; then
    mkdir "$work/selinux"
    cp "$root"/packaging/selinux/psmon.{te,fc,if} "$work/selinux/"
    make -s -C "$work/selinux" -f /usr/share/selinux/devel/Makefile psmon.pp >/dev/null
    install -D -m 0644 "$work/selinux/psmon.pp" "$stage/usr/share/selinux/packages/psmon.pp"
    install -D -m 0644 "$root/packaging/selinux/psmon.if" "$stage/usr/share/selinux/devel/include/contrib/psmon.if"
    selinux=yes
fi
# The shipped psagent.conf logs where ProcessSaver did (LOG_DIR).
mkdir -p "$stage/var/lib/psmon" "$stage/var/log/psmon" "$stage/var/opt/HA/PS/log"

# The file list: configuration kept when edited, the rest as shipped.
files=$work/files
{
    echo "%dir /etc/psmon"
    for f in psagent.conf psenv pfile_os; do echo "%config(noreplace) /etc/psmon/$f"; done
    echo "%config(noreplace) /etc/logrotate.d/psmon"
    echo "%dir /var/lib/psmon"
    echo "%dir /var/log/psmon"
    echo "%dir /var/opt/HA/PS/log"
    (cd "$stage" && find . -type f ! -path './etc/*' | sed 's|^\.||' | sort)
} > "$files"

cat > "$work/psmon.spec" <<SPEC
%define debug_package %{nil}
%define __os_install_post %{nil}
Name:           psmon
Version:        $version
Release:        $release
Summary:        Process monitor: restarts and fails over watched processes
License:        MIT OR Apache-2.0
BuildArch:      x86_64
Requires(post): systemd
Requires(preun): systemd
Requires(postun): systemd

%description
psmon keeps the processes of a server alive: the kernel (eBPF, or the proc
connector) tells it of every exit at once, and it restarts the process or
asks the cluster (Pacemaker, CLUSTERPRO X) to fail over, as configured in
ProcessSaver pfiles or psmon's TOML files. It serves health, status and
Prometheus metrics over HTTP and pushes events to a URL.

%install
cp -a $stage/. %{buildroot}/

%post
systemctl daemon-reload >/dev/null 2>&1 || :
if [ -x /usr/sbin/semodule ] && [ -f /usr/share/selinux/packages/psmon.pp ] && /usr/sbin/selinuxenabled 2>/dev/null; then
    # Loading a module rebuilds the whole policy (a minute on a slow host):
    # an upgrade that ships the same module leaves the loaded one.
    sum=\$(sha256sum < /usr/share/selinux/packages/psmon.pp)
    if [ "\$sum" != "\$(cat /var/lib/psmon/selinux-module.sha256 2>/dev/null)" ] || ! /usr/sbin/semodule -l | grep -qx psmon; then
        /usr/sbin/semodule -i /usr/share/selinux/packages/psmon.pp && echo "\$sum" > /var/lib/psmon/selinux-module.sha256 || :
    fi
    /usr/sbin/restorecon -R /usr/sbin/psmon /etc/psmon /var/lib/psmon /var/log/psmon /var/opt/HA/PS/log >/dev/null 2>&1 || :
fi

%preun
if [ \$1 -eq 0 ]; then
    systemctl --no-reload disable --now psmon.service >/dev/null 2>&1 || :
fi

%postun
systemctl daemon-reload >/dev/null 2>&1 || :
if [ \$1 -ge 1 ]; then
    systemctl try-restart psmon.service >/dev/null 2>&1 || :
fi
if [ \$1 -eq 0 ] && [ -x /usr/sbin/semodule ] && /usr/sbin/selinuxenabled 2>/dev/null; then
    /usr/sbin/semodule -r psmon >/dev/null 2>&1 || :
    rm -f /var/lib/psmon/selinux-module.sha256
fi

%files -f $files
SPEC

rpmbuild -bb --quiet --nodeps \
    --define "_topdir $work/build" \
    --define "_rpmdir $out" \
    --define "_build_id_links none" \
    "$work/psmon.spec" >"$work/rpmbuild.log" 2>&1 || { cat "$work/rpmbuild.log" >&2; exit 1; }
rpm=$(find "$out" -name "psmon-$version-$release.*.rpm" -newer "$work/psmon.spec" | head -n 1)
[ -n "$rpm" ] || { echo "rpmbuild made no RPM" >&2; cat "$work/rpmbuild.log" >&2; exit 1; }
echo "selinux module: $selinux"
echo "$rpm"
