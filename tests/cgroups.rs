//! Targets that are cgroups: `cgroup = DIR` and `unit = NAME.service`,
//! watched through real cgroup v2 directories the test makes under the v2
//! mount (found from /proc/self/mountinfo, as psmon finds it: on this
//! kind of host a hybrid hierarchy puts it at /sys/fs/cgroup/unified; on
//! RHEL 9 it is /sys/fs/cgroup).

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::*;

fn v2_mount() -> PathBuf {
    psmon::proc::cgroup2_mount().expect("a cgroup v2 hierarchy is mounted")
}

/// A cgroup directory of the test's own, removed (with its processes
/// killed) on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(dir: PathBuf) -> Cgroup {
        std::fs::create_dir_all(&dir).unwrap();
        Cgroup(dir)
    }

    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.0.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The shell line that starts `victim` in this cgroup.
    fn start_line(&self, victim: &Path) -> String {
        format!(
            "sh -c 'echo $$ > {}/cgroup.procs && exec {} sleep' >/dev/null 2>&1 &",
            self.0.display(),
            victim.display()
        )
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for pid in self.pids() {
            kill9_pid(pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `line` with sh and waits for a process in the cgroup.
fn start_in(cgroup: &Cgroup, line: &str, not: &[u32]) -> u32 {
    let status = Command::new("sh").arg("-c").arg(line).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = cgroup.pids().into_iter().find(|p| !not.contains(p)) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "nothing started in {}",
            cgroup.0.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The processes of a cgroup are the entry's, and only they: the same
/// executable running outside it does not keep the entry up.
fn watch_and_restart(tag: &str, target: &str, cgroup: &Cgroup, name_in_messages: &str) {
    let dir = TempDir::new(tag);
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, &format!("{tag}d"));
    std::fs::write(
        conf.join("app.toml"),
        format!(
            "[[entry]]\n{target}\nrestart = \"{}\"\nretry = 5\n",
            cgroup.start_line(&victim).replace('"', "\\\"")
        ),
    )
    .unwrap();
    let inside = start_in(cgroup, &cgroup.start_line(&victim), &[]);
    let outsider = reap_later(spawn_fresh(Command::new(&victim).arg("sleep")));

    let mut psmon = Psmon::start(&conf, "auto");
    let up = psmon.wait_for(") Up", |m| m["pid"] == inside);
    assert_eq!(
        up["running"], 1,
        "the process outside the cgroup must not count: {up}"
    );
    assert!(
        up["message"]
            .as_str()
            .unwrap()
            .contains(&format!("('{name_in_messages}',pid={inside})")),
        "{up}"
    );

    kill9_pid(inside);
    let down = psmon.wait("Down");
    assert_eq!(down["pid"], inside, "{down}");
    let back = psmon.wait_for(") Up", |m| m["pid"] != inside);
    let new = back["pid"].as_u64().unwrap() as u32;
    assert!(
        cgroup.pids().contains(&new),
        "the restarted process is in the cgroup"
    );
    assert_ne!(new, outsider);
    drop(psmon);
    kill_all(&victim);
}

#[test]
fn a_cgroup_directory_is_a_target() {
    if !needs_root("making a cgroup") {
        return;
    }
    let cgroup = Cgroup::new(v2_mount().join(format!("psmon-test-{}", std::process::id())));
    let target = format!("cgroup = \"{}\"", cgroup.0.display());
    let name = cgroup.0.display().to_string();
    watch_and_restart("cgroup", &target, &cgroup, &name);
}

/// A unit's processes are found through its cgroup (here made by the test
/// where systemd would put it: no systemd runs as PID 1 on this host).
#[test]
fn a_systemd_unit_is_a_target() {
    if !needs_root("making a cgroup") {
        return;
    }
    let unit = format!("psmon-test-{}.service", std::process::id());
    let slice = v2_mount().join("system.slice");
    let made_slice = !slice.exists();
    let cgroup = Cgroup::new(slice.join(&unit));
    watch_and_restart("unit", &format!("unit = \"{unit}\""), &cgroup, &unit);
    drop(cgroup);
    if made_slice {
        let _ = std::fs::remove_dir(&slice);
    }
}
