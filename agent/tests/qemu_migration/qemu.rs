//! The guest image (built once per test binary run) and the QEMU processes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::console::Console;
use crate::net::Net;
use crate::qmp::Qmp;
use crate::{Result, GUEST_KERNEL_IP, MAC};

pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub fn image() -> &'static Image {
    static IMAGE: OnceLock<std::result::Result<Image, String>> = OnceLock::new();
    let r = IMAGE.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = base.join("qemu-guest");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/qemu/build-guest.sh");
        let t = Instant::now();
        let o = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .arg(env!("CARGO_BIN_EXE_vfailover"))
            .env("VFAILOVER_QEMU_CACHE", base.join("qemu-kernel-cache"))
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !o.status.success() {
            return Err(format!(
                "building the guest failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        eprintln!(
            "{}(guest image built in {:.1} s)",
            String::from_utf8_lossy(&o.stdout),
            t.elapsed().as_secs_f64()
        );
        let vmlinux = out.join("vmlinux");
        Ok(Image {
            kernel: if vmlinux.exists() {
                vmlinux
            } else {
                out.join("vmlinuz")
            },
            initrd: out.join("initramfs.cpio"),
        })
    });
    match r {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Role {
    Source,
    Destination,
}

pub struct GuestOpts {
    pub guest_announce: bool,
    pub slave_ipv6: bool,
    pub daemon: bool,
}

pub struct Qemu {
    pub child: Child,
    pub qmp: Qmp,
    pub console: Console,
    pub log: PathBuf,
}

/// The fabric's two tap pairs (`src-s`/`src-p`, `dst-s`/`dst-p`): a migration goes from
/// the QEMU on one to a QEMU started on the other, and the next one back.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Taps {
    Src,
    Dst,
}

impl Taps {
    pub fn prefix(self) -> &'static str {
        match self {
            Taps::Src => "src",
            Taps::Dst => "dst",
        }
    }

    pub fn other(self) -> Taps {
        match self {
            Taps::Src => Taps::Dst,
            Taps::Dst => Taps::Src,
        }
    }
}

impl Qemu {
    /// The first QEMU of its role: the source on the `src` taps, the destination on `dst`.
    pub fn spawn(net: &Net, role: Role, o: &GuestOpts) -> Result<Qemu> {
        let taps = match role {
            Role::Source => Taps::Src,
            Role::Destination => Taps::Dst,
        };
        Qemu::spawn_on(net, role, taps, taps.prefix(), o)
    }

    /// A QEMU on `taps`, its files in the run directory named after `name`.
    pub fn spawn_on(net: &Net, role: Role, taps: Taps, name: &str, o: &GuestOpts) -> Result<Qemu> {
        let img = image();
        let st = format!("{}-s", taps.prefix());
        let pt = format!("{}-p", taps.prefix());
        let d = &net.dir;
        let qmp = d.join(format!("{name}.qmp"));
        let ser = d.join(format!("{name}.serial"));
        let log = d.join(format!("{name}.qemu.log"));
        let append = format!(
            "console=ttyS0 panic=-1 quiet vfo.kip={GUEST_KERNEL_IP}/24 vfo.slave_ipv6={} \
             vfo.daemon={} {}",
            u8::from(o.slave_ipv6),
            u8::from(o.daemon),
            std::env::var("VFAILOVER_QEMU_APPEND").unwrap_or_default()
        );
        let ga = if o.guest_announce { "on" } else { "off" };
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            net.host.clone(),
            "qemu-system-x86_64".into(),
        ];
        args.push("-accel".into());
        args.push(std::env::var("VFAILOVER_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into()));
        for a in [
            "-machine",
            "q35",
            "-m",
            "512",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ] {
            args.push(a.into());
        }
        // Guest RAM touched at start, not while a migration writes into it: on a machine whose
        // first touch of a page is slow (1-2 s for 512 MiB on this project's VMs) the guest's
        // pause for the copy grew from about 0.2 s to 1.1 s, and the peer's backed-off
        // retransmissions turned that into a 3 s TCP stall.
        args.push("-mem-prealloc".into());
        args.extend([
            "-name".into(),
            format!("vfailover-test-{name}"),
            "-kernel".into(),
            img.kernel.display().to_string(),
            "-initrd".into(),
            img.initrd.display().to_string(),
            "-append".into(),
            append,
            "-chardev".into(),
            format!("socket,id=ser0,path={},server=on,wait=off", ser.display()),
            "-serial".into(),
            "chardev:ser0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-device".into(),
            "pcie-root-port,id=rp1,chassis=1,slot=1,bus=pcie.0".into(),
            "-device".into(),
            "pcie-root-port,id=rp2,chassis=2,slot=2,bus=pcie.0".into(),
            "-netdev".into(),
            format!("tap,id=hs,ifname={st},script=no,downscript=no"),
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=hs,mac={MAC},id=standby0,failover=on,\
                 guest_announce={ga},bus=rp1"
            ),
            "-netdev".into(),
            format!("tap,id=hp,ifname={pt},script=no,downscript=no"),
            "-device".into(),
            // romfile=: QEMU 7.2 migrates the unplugged primary's option ROM RAM block, and the
            // destination (primary still hidden) refuses it: `Unknown ramblock "…/e1000e.rom"`.
            format!(
                "e1000e,netdev=hp,mac={MAC},id=primary0,failover_pair_id=standby0,romfile=,bus=rp2"
            ),
        ]);
        match role {
            Role::Source => args.push("-S".into()),
            Role::Destination => {
                args.push("-incoming".into());
                args.push(format!("unix:{}", d.join("migrate.sock").display()));
            }
        }
        let logf = File::create(&log).map_err(|e| e.to_string())?;
        // `ip netns exec` execs QEMU: the child's PID is QEMU's.
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
        let stopped = Arc::new(AtomicBool::new(false));
        let connected = Qmp::connect(&qmp, stopped.clone()).and_then(|q| {
            Console::connect(&ser, d.join(format!("{name}.console.log")), name, stopped)
                .map(|c| (q, c))
        });
        let (mut qmp, console) = match connected {
            Ok(x) => x,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} QEMU: {e}; log: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
        };
        qmp.cmd(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]}),
        )?;
        Ok(Qemu {
            child,
            qmp,
            console,
            log,
        })
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
