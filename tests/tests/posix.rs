//! File operations through a real Kith mount, checked the way programs see them.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use kith_tests::{Kith, pattern, skip_without_fuse};
use rustix::fs::{FallocateFlags, RenameFlags, XattrFlags};

#[test]
fn files_round_trip_with_writes_truncates_and_fsync() -> anyhow::Result<()> {
    if skip_without_fuse("files_round_trip_with_writes_truncates_and_fsync") {
        return Ok(());
    }
    let kith = Kith::new()?;
    kith.mount()?;

    // Small, medium (several chunks) and empty files.
    let small = kith.path("small.txt");
    fs::write(&small, b"hello kith\n")?;
    assert_eq!(fs::read(&small)?, b"hello kith\n");
    let big = kith.path("big.bin");
    let content = pattern(1, 5 << 20);
    let mut file = fs::File::create(&big)?;
    file.write_all(&content)?;
    file.sync_all()?;
    drop(file);
    assert!(fs::read(&big)? == content, "big file differs");
    fs::File::create(kith.path("empty"))?;
    assert_eq!(fs::metadata(kith.path("empty"))?.len(), 0);

    // Overwrite in the middle, append, read at offsets.
    let mut file = fs::OpenOptions::new().read(true).write(true).open(&big)?;
    file.seek(SeekFrom::Start(1_000_000))?;
    file.write_all(b"MIDDLE")?;
    file.seek(SeekFrom::End(0))?;
    file.write_all(b"TAIL")?;
    file.sync_data()?;
    let mut expected = content.clone();
    expected[1_000_000..1_000_006].copy_from_slice(b"MIDDLE");
    expected.extend_from_slice(b"TAIL");
    let mut back = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut back)?;
    assert_eq!(back.len(), expected.len());
    assert!(back == expected, "content differs after overwrite + append");

    // Truncate down, then up (the new range reads as zeros).
    file.set_len(10)?;
    file.set_len(20)?;
    drop(file);
    let mut truncated = content[..10].to_vec();
    truncated.extend_from_slice(&[0; 10]);
    assert_eq!(fs::read(&big)?, truncated);

    // O_APPEND
    let mut log = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(kith.path("log"))?;
    log.write_all(b"one\n")?;
    log.write_all(b"two\n")?;
    drop(log);
    assert_eq!(fs::read(kith.path("log"))?, b"one\ntwo\n");

    // fsync of an open but unlinked file still works and the data stays readable.
    let mut ghost = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(kith.path("ghost"))?;
    fs::remove_file(kith.path("ghost"))?;
    ghost.write_all(b"still here")?;
    ghost.sync_all()?;
    ghost.set_len(5)?;
    let mut back = String::new();
    ghost.seek(SeekFrom::Start(0))?;
    ghost.read_to_string(&mut back)?;
    assert_eq!(back, "still");
    Ok(())
}

#[test]
fn names_links_and_renames_behave_like_posix() -> anyhow::Result<()> {
    if skip_without_fuse("names_links_and_renames_behave_like_posix") {
        return Ok(());
    }
    let kith = Kith::new()?;
    kith.mount()?;

    fs::create_dir_all(kith.path("a/b/c"))?;
    fs::write(kith.path("a/b/c/f"), b"data")?;
    assert!(fs::metadata(kith.path("a/b/c"))?.is_dir());

    // Hard link: one inode, nlink 2, both names see a change.
    fs::hard_link(kith.path("a/b/c/f"), kith.path("a/g"))?;
    let one = fs::metadata(kith.path("a/b/c/f"))?;
    let two = fs::metadata(kith.path("a/g"))?;
    assert_eq!(one.ino(), two.ino());
    assert_eq!(two.nlink(), 2);
    fs::write(kith.path("a/g"), b"changed")?;
    assert_eq!(fs::read(kith.path("a/b/c/f"))?, b"changed");
    fs::remove_file(kith.path("a/g"))?;
    assert_eq!(fs::metadata(kith.path("a/b/c/f"))?.nlink(), 1);

    // Symlink
    std::os::unix::fs::symlink("b/c/f", kith.path("a/link"))?;
    assert_eq!(fs::read_link(kith.path("a/link"))?.to_str(), Some("b/c/f"));
    assert_eq!(fs::read(kith.path("a/link"))?, b"changed");
    assert!(
        fs::symlink_metadata(kith.path("a/link"))?
            .file_type()
            .is_symlink()
    );

    // Rename across directories, over an existing file.
    fs::write(kith.path("x"), b"x")?;
    fs::write(kith.path("a/y"), b"y")?;
    fs::rename(kith.path("x"), kith.path("a/y"))?;
    assert_eq!(fs::read(kith.path("a/y"))?, b"x");
    assert!(!kith.path("x").exists());

    // RENAME_NOREPLACE refuses; RENAME_EXCHANGE swaps.
    fs::write(kith.path("p"), b"p")?;
    fs::write(kith.path("q"), b"q")?;
    let cwd = rustix::fs::CWD;
    let refused = rustix::fs::renameat_with(
        cwd,
        kith.path("p"),
        cwd,
        kith.path("q"),
        RenameFlags::NOREPLACE,
    );
    assert_eq!(refused, Err(rustix::io::Errno::EXIST));
    rustix::fs::renameat_with(
        cwd,
        kith.path("p"),
        cwd,
        kith.path("q"),
        RenameFlags::EXCHANGE,
    )?;
    assert_eq!(fs::read(kith.path("p"))?, b"q");
    assert_eq!(fs::read(kith.path("q"))?, b"p");

    // rmdir only when empty; the listing shows exactly what exists.
    assert!(fs::remove_dir(kith.path("a/b")).is_err());
    fs::remove_dir_all(kith.path("a/b"))?;
    let mut names: Vec<String> = fs::read_dir(kith.path("a"))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["link", "y"]);

    // Names longer than 255 bytes are refused with ENAMETOOLONG.
    let long = kith.path("n".repeat(256));
    let error = fs::write(&long, b"").err().and_then(|e| e.raw_os_error());
    assert_eq!(error, Some(libc::ENAMETOOLONG));

    // FIFOs
    rustix::fs::mknodat(
        cwd,
        kith.path("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )?;
    assert!(fs::metadata(kith.path("fifo"))?.file_type().is_fifo());
    Ok(())
}

#[test]
fn attributes_xattrs_and_space_operations() -> anyhow::Result<()> {
    if skip_without_fuse("attributes_xattrs_and_space_operations") {
        return Ok(());
    }
    let kith = Kith::new()?;
    kith.mount()?;
    let path = kith.path("f");
    fs::write(&path, pattern(2, 3 << 20))?;
    // A file is not a terminal: the isatty probe most programs make gets ENOTTY.
    let file = fs::File::open(&path)?;
    assert!(!rustix::termios::isatty(&file));
    assert_eq!(
        rustix::termios::tcgetattr(&file).err(),
        Some(rustix::io::Errno::NOTTY)
    );
    drop(file);

    // chmod, utimens (explicit time and UTIME_OMIT via std's set_times).
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640))?;
    assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o7777, 0o640);
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let file = fs::File::options().write(true).open(&path)?;
    file.set_times(fs::FileTimes::new().set_modified(past))?;
    let meta = fs::metadata(&path)?;
    assert_eq!(meta.modified()?, past);
    assert_ne!(meta.accessed()?, past, "atime was not asked to change");

    // xattrs: set, get, list, create/replace flags, remove.
    rustix::fs::setxattr(&path, "user.colour", b"blue", XattrFlags::empty())?;
    let mut buf = [0u8; 64];
    let len = rustix::fs::getxattr(&path, "user.colour", &mut buf[..])?;
    assert_eq!(&buf[..len], b"blue");
    assert_eq!(
        rustix::fs::setxattr(&path, "user.colour", b"red", XattrFlags::CREATE),
        Err(rustix::io::Errno::EXIST)
    );
    assert_eq!(
        rustix::fs::setxattr(&path, "user.size", b"L", XattrFlags::REPLACE),
        Err(rustix::io::Errno::NODATA)
    );
    rustix::fs::setxattr(&path, "user.size", b"L", XattrFlags::CREATE)?;
    let len = rustix::fs::listxattr(&path, &mut buf[..])?;
    let mut names: Vec<&[u8]> = buf[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    assert_eq!(names, [&b"user.colour"[..], &b"user.size"[..]]);
    rustix::fs::removexattr(&path, "user.colour")?;
    assert_eq!(
        rustix::fs::getxattr(&path, "user.colour", &mut buf[..]),
        Err(rustix::io::Errno::NODATA)
    );

    // Punch a hole: zeros read back, size unchanged, SEEK_HOLE/SEEK_DATA find it.
    let file = fs::File::options().read(true).write(true).open(&path)?;
    let hole_at = 1 << 20;
    rustix::fs::fallocate(
        &file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        hole_at,
        1 << 20,
    )?;
    assert_eq!(file.metadata()?.len(), 3 << 20);
    let content = fs::read(&path)?;
    assert!(content[hole_at as usize..(2 << 20)].iter().all(|b| *b == 0));
    assert_eq!(
        &content[..hole_at as usize],
        &pattern(2, 3 << 20)[..hole_at as usize]
    );
    // Holes are found at leaf granularity (leaves of a zero run are 256 KiB): the
    // first starts inside the punched range, data resumes at the leaf holding its end.
    let leaf = 256 << 10;
    let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(0))?;
    assert!(
        hole >= hole_at && hole < hole_at + leaf,
        "first hole at {hole}, punched at {hole_at}"
    );
    let data = rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(hole_at))?;
    assert!(data >= hole_at && data <= 2 << 20, "data resumes at {data}");
    // (Two leaves: the zero leaf just before data may be cut short, and count as data.)
    let data = rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(hole))?;
    assert!(
        data > (2 << 20) - 2 * leaf && data <= 2 << 20,
        "data resumes at {data}"
    );
    assert_eq!(
        rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(data))?,
        3 << 20
    );
    assert_eq!(
        rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(3 << 20)),
        Err(rustix::io::Errno::NXIO)
    );

    // copy_file_range into a new file.
    let copy = fs::File::create(kith.path("copy"))?;
    let (mut offset_in, mut offset_out) = (0u64, 0u64);
    let mut copied = 0;
    while copied < 3 << 20 {
        let n = rustix::fs::copy_file_range(
            &file,
            Some(&mut offset_in),
            &copy,
            Some(&mut offset_out),
            (3 << 20) - copied,
        )?;
        if n == 0 {
            break;
        }
        copied += n;
    }
    drop(copy);
    let copied = fs::read(kith.path("copy"))?;
    assert_eq!(copied.len(), content.len());
    let first_difference = copied.iter().zip(&content).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "copy differs from its source");

    // statfs reports the name limit the volume enforces.
    let stat = rustix::fs::statfs(&kith.mnt)?;
    assert_eq!(stat.f_namelen, 255);
    Ok(())
}

#[test]
fn sparse_files_report_their_holes_and_copy_sparse() -> anyhow::Result<()> {
    if skip_without_fuse("sparse_files_report_their_holes_and_copy_sparse") {
        return Ok(());
    }
    let kith = Kith::new()?;
    kith.mount()?;
    // A file grown by truncate, then one write at the end (how VM images and
    // databases start out).
    let size: u64 = 64 << 20;
    let tail = pattern(3, 1 << 20);
    let path = kith.path("image");
    let mut file = fs::File::create(&path)?;
    file.set_len(size)?;
    file.seek(SeekFrom::Start(size - (1 << 20)))?;
    file.write_all(&tail)?;
    drop(file);
    let file = fs::File::open(&path)?;
    let seek = |to| rustix::fs::seek(&file, to);
    assert_eq!(seek(rustix::fs::SeekFrom::Hole(0))?, 0);
    let data = seek(rustix::fs::SeekFrom::Data(0))?;
    let data_start = size - (1 << 20);
    // Within two leaves of the write (the zero leaf just before data may be cut short).
    assert!(
        data <= data_start && data > data_start - (512 << 10),
        "data at {data}, written at {data_start}"
    );
    assert_eq!(seek(rustix::fs::SeekFrom::Hole(data))?, size);
    assert_eq!(
        seek(rustix::fs::SeekFrom::Data(size)),
        Err(rustix::io::Errno::NXIO)
    );
    // st_blocks leaves the zero leaves out: cp and tar look for holes only then.
    let blocks = fs::metadata(&path)?.blocks();
    assert_eq!(blocks, (size - data).div_ceil(512));

    // A plain cp (--sparse=auto) finds the data through SEEK_DATA/SEEK_HOLE, copies
    // the same bytes and leaves the holes out of the copy.
    let copy = kith.root().join("copy");
    let status = std::process::Command::new("cp")
        .arg(&path)
        .arg(&copy)
        .status()?;
    assert!(status.success(), "cp failed: {status}");
    let copied = fs::read(&copy)?;
    assert_eq!(copied.len() as u64, size);
    assert!(copied[..data_start as usize].iter().all(|b| *b == 0));
    assert!(copied[data_start as usize..] == tail[..], "tail differs");
    let copy_bytes = fs::metadata(&copy)?.blocks() * 512;
    assert!(copy_bytes < 8 << 20, "the copy holds {copy_bytes} bytes");
    Ok(())
}
