//! `make up` itself: the `replikv-up` runner starts the cluster in the
//! foreground and leaves no process behind, however it ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts `replikv-up` on free ports and waits for its "Press Ctrl-C" line.
fn start_runner(run_dir: &std::path::Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_replikv-up"))
        .args(["--base-port", "0", "--fresh", "--run-dir"])
        .arg(run_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("replikv-up starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("replikv-up ended early:\n{seen}"));
        let line = line.expect("utf-8 line");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    // Keep draining stdout so that the runner never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// Every process whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Fields after the parenthesised command name: state, ppid, ...
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            rest.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    matches!(state, Some(s) if s != "Z")
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "replikv-up still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM stops the runner and every process it started, and it exits 0.
#[test]
fn sigterm_stops_every_child() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut runner = start_runner(dir.path());
    let children = children_of(runner.id());
    assert_eq!(
        children.len(),
        5,
        "2 kv-backends and 3 Envoys: {children:?}"
    );

    kill(Pid::from_raw(runner.id() as i32), Signal::SIGTERM).expect("signal");
    let status = wait_exit(&mut runner, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    all_gone(&children);
}

/// When one process dies early, the runner stops all the others and fails.
#[test]
fn a_dying_child_stops_the_whole_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut runner = start_runner(dir.path());
    let children = children_of(runner.id());
    assert_eq!(children.len(), 5);

    kill(Pid::from_raw(children[0] as i32), Signal::SIGKILL).expect("signal");
    let status = wait_exit(&mut runner, Duration::from_secs(30));
    assert!(!status.success());
    all_gone(&children);
}

/// Even `kill -9` of the runner leaves no orphan: its children die with it.
#[test]
fn killing_the_runner_leaves_no_orphans() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut runner = start_runner(dir.path());
    let children = children_of(runner.id());
    assert_eq!(children.len(), 5);

    runner.kill().expect("kill -9");
    runner.wait().expect("reaped");
    all_gone(&children);
}
