//! A device set to keep a full copy (`keep = "full"`) fetches every block the volume
//! refers to in the background, pinned, and says so in `kith status`; once it reports
//! nothing left to fetch, every file opens on it with every other device stopped.

use std::sync::Mutex;

use anyhow::ensure;
use kith_tests::sync::{
    SYNC_TIMEOUT, cluster, join_and_mount, pause, read, resume, wait_for_content, wait_until,
    write_synced,
};
use kith_tests::{pattern, skip_without_fuse};

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_full_copy_device_opens_every_file_with_every_other_device_stopped() -> anyhow::Result<()> {
    if skip_without_fuse("a_full_copy_device_opens_every_file_with_every_other_device_stopped") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let devices = cluster(2)?;
    let [a, b] = [&devices[0], &devices[1]];
    // Inline small files, files of a few blocks, and one under pointer blocks, from
    // both devices.
    let files: Vec<(String, Vec<u8>)> = (0..12u64)
        .map(|n| (format!("f-{n}"), pattern(n, 1_000 + n as usize * 9_000)))
        .chain([("big".to_owned(), pattern(99, 6 << 20))])
        .collect();
    for (n, (name, content)) in files.iter().enumerate() {
        let writer = if n % 2 == 0 { a } else { b };
        write_synced(&writer.path(name), content)?;
    }
    let content_bytes: u64 = files
        .iter()
        .map(|(_, content)| content.len() as u64)
        .filter(|len| *len > 4096)
        .sum();

    let c = join_and_mount(a, 2, |device| device.set_config("keep = \"full\"\n"))?;
    let (last, last_content) = files
        .last()
        .map(|(n, c)| (n.clone(), c.clone()))
        .unwrap_or_default();
    wait_for_content(&c.path(&last), &last_content, SYNC_TIMEOUT)?;
    wait_until(SYNC_TIMEOUT, "c holds a full copy", || {
        let volume = c.sync_status()?.volume;
        ensure!(volume.keep == "full", "keep is {:?}", volume.keep);
        Ok(volume.content_walked
            && volume.content_bytes >= content_bytes
            && volume.bytes_to_fetch == 0
            && volume.behind == 0)
    })?;
    let text = c.ok(["status"])?;
    ensure!(
        text.contains("content: full copy") && text.contains("complete"),
        "status does not show the full copy: {text}"
    );

    // Everyone else stops: c serves from what it holds.
    let pids = [
        a.daemon_pid().ok_or_else(|| anyhow::anyhow!("a pid"))?,
        b.daemon_pid().ok_or_else(|| anyhow::anyhow!("b pid"))?,
    ];
    for pid in pids {
        pause(pid)?;
    }
    let mut wrong = Vec::new();
    for (name, content) in &files {
        match read(&c.path(name)) {
            Ok(read) if read == *content => {}
            Ok(_) => wrong.push(format!("{name}: other bytes")),
            Err(error) => wrong.push(format!("{name}: {error:#}")),
        }
    }
    for pid in pids {
        resume(pid)?;
    }
    ensure!(wrong.is_empty(), "files c could not open alone: {wrong:?}");
    Ok(())
}
