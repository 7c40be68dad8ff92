//! `kith demo`: three devices of one user on this machine, each with its own store,
//! XDG directories and mount, listening on loopback; Ctrl-C unmounts all three.
//!
//! It drives its own binary exactly as a person would (`mount`, `device add`,
//! `device join`, `unmount`), so what it shows is what the commands do. The keyrings
//! are unencrypted: it is a demo, and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{SigSet, Signal};

use crate::error::{Error, Result};

const DEVICES: [&str; 3] = ["laptop", "desktop", "server"];

/// One demo device's directories.
struct Device {
    name: &'static str,
    root: PathBuf,
}

impl Device {
    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    fn mount_point(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// `kith --store STORE args…` with this device's environment; stdout on success.
    fn kith(&self, args: &[&str]) -> Result<String> {
        let exe = std::env::current_exe().map_err(|source| Error::Path {
            what: "find the kith executable",
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        let output = Command::new(exe)
            .arg("--store")
            .arg(self.store())
            .args(args)
            .env("HOME", &self.root)
            .env("XDG_DATA_HOME", self.root.join("data"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("KITH_KEYRING", "unencrypted")
            .env("KITH_DEVICE_NAME", self.name)
            .output()
            .map_err(|source| Error::Path {
                what: "run kith for",
                path: self.root.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(Error::Startup(format!(
                "demo device {}: `kith {}` failed: {}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn mount(&self) -> Result<()> {
        let mount_point = self.mount_point();
        let mount_point = mount_point.to_string_lossy();
        self.kith(&["mount", &mount_point, "--listen", "127.0.0.1:0"])?;
        Ok(())
    }

    fn unmount(&self) {
        let mount_point = self.mount_point();
        if let Err(error) = self.kith(&["unmount", &mount_point.to_string_lossy()]) {
            eprintln!("kith demo: {error}");
        }
    }
}

/// Runs the demo until Ctrl-C.
pub fn run(dir: Option<PathBuf>) -> Result<()> {
    // Before any thread: Ctrl-C is taken with sigwait, so cleanup always runs.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| Error::Startup(format!("cannot block signals: {e}")))?;
    let root = match dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("kith-demo-{}", std::process::id())),
    };
    let devices: Vec<Device> = DEVICES
        .iter()
        .map(|name| Device {
            name,
            root: root.join(name),
        })
        .collect();
    for device in &devices {
        for sub in [PathBuf::from("mnt"), PathBuf::from("run")] {
            create_dir(&device.root.join(sub))?;
        }
    }
    println!("kith demo: three devices under {}", root.display());
    println!("kith demo: keyrings are UNENCRYPTED (a demo; real devices use a passphrase)");
    let mut mounted: Vec<&Device> = Vec::new();
    let result = set_up(&devices, &mut mounted);
    if let Err(error) = &result {
        eprintln!("kith demo: {error}");
    } else {
        print_help(&devices);
        let _ = signals.wait();
        println!("\nkith demo: stopping");
    }
    for device in mounted.iter().rev() {
        device.unmount();
    }
    println!(
        "kith demo: unmounted; the stores stay in {} (remove it when done)",
        root.display()
    );
    result
}

fn set_up<'a>(devices: &'a [Device], mounted: &mut Vec<&'a Device>) -> Result<()> {
    let Some((first, others)) = devices.split_first() else {
        return Ok(());
    };
    first.mount()?;
    mounted.push(first);
    println!("kith demo: {} created the user and the volume", first.name);
    for device in others {
        let answer = first.kith(&["device", "add"])?;
        let code = answer.lines().next().unwrap_or_default().trim().to_owned();
        device.kith(&["device", "join", &code])?;
        device.mount()?;
        mounted.push(device);
        println!("kith demo: {} joined through {}", device.name, first.name);
    }
    Ok(())
}

fn print_help(devices: &[Device]) {
    println!();
    for device in devices {
        println!("  {:<8} {}", device.name, device.mount_point().display());
    }
    if let [a, b, c] = devices {
        let (a, b, c) = (a.mount_point(), b.mount_point(), c.mount_point());
        println!("\nTry:");
        println!("  echo hello > {}/hello.txt", a.display());
        println!("  cat {}/hello.txt", b.display());
        println!("  mkdir {}/photos && ls {}", c.display(), a.display());
        // Each device has its own runtime dir, where its daemon's socket is.
        if let Some(desktop) = b.parent() {
            println!(
                "  XDG_RUNTIME_DIR={} kith --store {} status",
                desktop.join("run").display(),
                desktop.join("store").display()
            );
        }
    }
    println!("\nCtrl-C stops the demo and unmounts all three.");
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Path {
        what: "create",
        path: path.to_owned(),
        source,
    })
}
