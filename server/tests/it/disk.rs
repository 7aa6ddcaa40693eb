//! Disk faults under a running server: a file system that fills up, and free space that drops
//! below the log's reserve. Each test mounts a small tmpfs of its own, so it needs root (and the
//! `mount` command); without them it says so and passes without checking anything.
//!
//! What must hold (README, "Durability"): a 202 is never lost to a full disk — the server stops
//! acknowledging (503 `log_stalled`, `/readyz` not ready), keeps what it already acknowledged in
//! memory, and writes it once the disk takes writes again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pulse_testkit::fixtures::{assert_error, eventually, segment_files, CHROME_DESKTOP};
use pulse_testkit::server::{Opts, Server};
use serde_json::{json, Value};

use crate::start_in;

const SITE: &str = "disk";
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Events per collect request while filling the disk.
const BATCH: usize = 50;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    _parent: tempfile::TempDir,
    mount_point: PathBuf,
}

impl SmallDisk {
    /// `None` (with a message) when this process may not mount file systems.
    fn mount(size: &str) -> Option<Self> {
        let parent = tempfile::tempdir().unwrap();
        let mount_point = parent.path().join("disk");
        std::fs::create_dir(&mount_point).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs (needs root and mount(8)); the disk-full checks \
                 did not run"
            );
            return None;
        }
        Some(Self {
            _parent: parent,
            mount_point,
        })
    }

    fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Writes a file of `bytes` zeros, leaving that much less room.
    fn fill(&self, name: &str, bytes: usize) -> PathBuf {
        let path = self.mount_point.join(name);
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

fn batch(first: usize) -> Value {
    Value::Array(
        (first..first + BATCH)
            .map(|n| json!({"website_id": SITE, "type": "pageview", "url": format!("/n/{n}")}))
            .collect(),
    )
}

/// Sends batches (numbered on from `already_acked`) until one is refused with 503 `log_stalled`
/// and returns how many events were acknowledged in all. Panics on any other answer, or when the disk never stalls.
async fn fill_until_stalled(proc: &Server, already_acked: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = already_acked;
    loop {
        let resp = proc
            .collect_as(CHROME_DESKTOP, &batch(acked))
            .await
            .unwrap();
        match resp.status {
            202 => acked += BATCH,
            503 => {
                assert_error(&resp, 503, "log_stalled", "collect on a full disk");
                assert!(resp.header("retry-after").is_some(), "{resp:?}");
                return acked;
            }
            _ => panic!("collect on a filling disk answered {resp:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "{acked} events acknowledged and the log never stalled; stderr:\n{}",
            proc.stderr()
        );
    }
}

/// Waits until a batch is acknowledged again after the disk got room, and returns how many events
/// were acknowledged in all.
async fn resume(proc: &Server, acked: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = proc
            .collect_as(CHROME_DESKTOP, &batch(acked))
            .await
            .unwrap();
        if resp.status == 202 {
            return acked + BATCH;
        }
        assert_error(&resp, 503, "log_stalled", "collect while the disk recovers");
        assert!(
            Instant::now() < deadline,
            "the log did not resume after the disk got room; stderr:\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the server cleanly, starts it again on the same data and checks that exactly the
/// acknowledged events are back.
async fn check_every_ack_survives_a_restart(proc: &mut Server, acked: usize) {
    let status = proc.stop();
    assert!(
        status.success(),
        "SIGTERM: {status}; stderr:\n{}",
        proc.stderr()
    );
    proc.respawn();
    let replay = proc.wait_ready(READY_DEADLINE).await;
    assert_eq!(replay["events"].as_u64(), Some(acked as u64), "{replay}");
    let data = proc.realtime_q(SITE, "?include_bots=true").await;
    assert_eq!(
        data["pagination"]["total_in_window"].as_u64(),
        Some(acked as u64),
        "every acknowledged event must be counted after the restart: {data}"
    );
    let status = proc.stop();
    assert!(
        status.success(),
        "SIGTERM: {status}; stderr:\n{}",
        proc.stderr()
    );
}

/// Starts a server on `data_dir` with `args`, ready and with the website `SITE`. Without
/// checkpoints: a restart must replay every acknowledged event from the log.
async fn start_with_site(data_dir: &Path, args: &[&str]) -> Server {
    let opts = Opts::default().args(&["--checkpoint-interval-secs", "0"]);
    let proc = start_in(opts.args(args), data_dir);
    proc.wait_ready(READY_DEADLINE).await;
    proc.site(SITE, "example.com").await;
    proc
}

/// Sends `batches` batches numbered on from `acked`, each answered 202; returns the new total.
async fn send_batches(proc: &Server, mut acked: usize, batches: usize) -> usize {
    for _ in 0..batches {
        let resp = proc
            .collect_as(CHROME_DESKTOP, &batch(acked))
            .await
            .unwrap();
        assert_eq!(resp.status, 202, "{resp:?}");
        acked += BATCH;
    }
    acked
}

#[tokio::test]
async fn a_full_disk_stalls_collect_and_loses_no_acknowledged_event() {
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    // No reserve: the log runs into ENOSPC itself.
    let mut proc = start_with_site(&disk.path().join("data"), &["--disk-reserve", "0"]).await;
    let filler = disk.fill("filler", 2_600_000);
    let acked = fill_until_stalled(&proc, 0).await;
    assert!(acked > 0, "nothing was acknowledged before the disk filled");
    let ready = proc.readyz().await;
    assert_error(&ready, 503, "log_stalled", "/readyz on a full disk");

    std::fs::remove_file(filler).unwrap();
    let acked = resume(&proc, acked).await;
    assert_eq!(
        proc.readyz().await.status,
        200,
        "/readyz after the disk got room"
    );
    check_every_ack_survives_a_restart(&mut proc, acked).await;
}

#[tokio::test]
async fn free_space_below_the_reserve_stops_acknowledging_before_the_disk_is_full() {
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    let mut proc = start_with_site(&disk.path().join("data"), &["--disk-reserve", "1MiB"]).await;
    let filler = disk.fill("filler", 1_500_000);
    let acked = fill_until_stalled(&proc, 0).await;
    let ready = proc.readyz().await;
    assert_error(&ready, 503, "log_stalled", "/readyz below the reserve");
    assert!(
        ready.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("below the reserve"),
        "/readyz should say why: {ready:?}"
    );
    assert!(
        !proc.stderr().contains("writing to the event log failed"),
        "the reserve should stop acknowledging before any write fails; stderr:\n{}",
        proc.stderr()
    );

    std::fs::remove_file(filler).unwrap();
    let acked = resume(&proc, acked).await;
    check_every_ack_survives_a_restart(&mut proc, acked).await;
}

#[tokio::test]
async fn segments_deleted_under_a_running_server_are_written_back() {
    let dir = tempfile::tempdir().unwrap();
    // Every append after the first rolls, so there are sealed segments as well as the open one.
    let mut proc = start_with_site(dir.path(), &["--segment-max-bytes", "1"]).await;
    let acked = send_batches(&proc, 0, 4).await;
    // Wait until the log has written them, then delete every segment file.
    let written = eventually(Duration::from_secs(10), || async {
        segment_files(dir.path()).len() >= 2
    })
    .await;
    assert!(written, "no segments written; stderr:\n{}", proc.stderr());
    for path in segment_files(dir.path()) {
        std::fs::remove_file(path).unwrap();
    }
    let noticed = eventually(Duration::from_secs(5), || async {
        proc.stderr().contains("SEGMENT FILES DELETED") && !segment_files(dir.path()).is_empty()
    })
    .await;
    assert!(
        noticed,
        "deleted segment files went unnoticed for 5 s; stderr:\n{}",
        proc.stderr()
    );
    let acked = send_batches(&proc, acked, 2).await;
    check_every_ack_survives_a_restart(&mut proc, acked).await;
}

/// `chattr +i` on a directory: nothing can be created in it, not even by root. Undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    /// `None` (with a message) where the file system or the user cannot do it.
    fn set(dir: &Path) -> Option<Self> {
        let done = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|status| status.success());
        if !done {
            eprintln!("SKIPPED: chattr +i failed (needs root and ext4 or similar); not checked");
            return None;
        }
        Some(Self(dir.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_log_directory_turned_read_only_before_a_roll_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    // Every append after the first rolls, so the next write needs a new file in the directory.
    let args = ["--segment-max-bytes", "1", "--disk-reserve", "0"];
    let mut proc = start_with_site(dir.path(), &args).await;
    let acked = send_batches(&proc, 0, 2).await;
    let segments = dir.path().join("segments");
    let Some(read_only) = Immutable::set(&segments) else {
        return;
    };
    let acked = fill_until_stalled(&proc, acked).await;
    assert_error(
        &proc.readyz().await,
        503,
        "log_stalled",
        "/readyz on a read-only log",
    );
    drop(read_only);
    let acked = resume(&proc, acked).await;
    check_every_ack_survives_a_restart(&mut proc, acked).await;
}
