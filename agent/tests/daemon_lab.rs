//! The daemon (`vfailover run`) in the namespace lab: it finds its pair,
//! follows unplug → migrate → replug under a TCP stream, announces (or
//! not) after the migration, survives bad input on its socket, reloads on
//! SIGHUP and cleans up on SIGTERM. Root only (skips otherwise, fails
//! under `CI=true`); bad configs need no root.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vfailover::capture::{self, Announce};
use vfailover::lab::agent::{default_pair, pair_config, Agent, Setup};
use vfailover::lab::{
    root_or_skip, Lab, LabOptions, Ns, PEER_IF, STACK_V4, STACK_V6, STANDBY, TOR_DST_PORT,
    TOR_SRC_PORT,
};
use vfailover::scenario::{udp_probes, GatedStream, ECHO_PORT};

const BIN: &str = env!("CARGO_BIN_EXE_vfailover");

/// The daemon in the lab's guest namespace (see [`Agent::start`]).
fn start(lab: &Lab, guest_announce: bool, pair: &str) -> Agent {
    Agent::start(lab, Path::new(BIN), guest_announce, pair).unwrap()
}

#[test]
fn daemon_follows_unplug_migrate_replug_under_a_byte_exact_stream() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let agent = start(&lab, false, &default_pair());
    let paired = agent.wait_for_path("primary").unwrap();
    assert_eq!(paired.standby.as_ref().unwrap().ifname, STANDBY);
    assert_eq!(paired.guest_announce, Some(false));

    let stream = GatedStream::start(&lab, 32 << 20, 3).unwrap();
    stream.wait_for_step(1).unwrap();
    lab.unplug().unwrap();
    let unplugged = agent.wait_for_path("standby").unwrap();
    assert!(unplugged.primary.is_none(), "{unplugged:?}");
    stream.step_done();
    stream.wait_for_step(2).unwrap();
    lab.migrate().unwrap();
    stream.step_done();
    stream.wait_for_step(3).unwrap();
    lab.replug().unwrap();
    let back = agent.wait_for_path("primary").unwrap();
    stream.step_done();
    let end = stream.finish().unwrap();
    assert!(
        end.byte_exact(),
        "the echoed stream differs\n{}",
        agent.log()
    );
    println!(
        "32 MiB echoed byte-exact in {:?} through unplug, migrate, replug",
        end.duration
    );

    let fin = agent.pair().unwrap();
    assert!(fin.switches >= 2, "{fin:?}");
    assert!(
        back.migrations_detected >= 1,
        "the replug is a migration signal: {back:?}"
    );
    assert!(fin.announces_sent >= 2, "{fin:?}");
    let primary = fin.primary.unwrap();
    assert!(
        primary.counters.tx_packets > 0 && primary.mode.starts_with("xdp"),
        "{primary:?}"
    );
    assert!(fin.standby.unwrap().counters.tx_packets > 0);
}

/// What the peer saw of a quiet guest's unplug, migrate and replug.
struct Migration {
    /// Announce frames captured from the migration on.
    frames: Vec<(Instant, Announce)>,
    /// When the replug began.
    replugged: Instant,
    /// The top-of-rack switch's port for the MAC, and UDP probes answered
    /// (of 5), once an announce schedule had time to run after the
    /// migration and before the replug.
    tor_port: Option<String>,
    probes_answered: u32,
}

fn silent_migration(lab: &Lab, agent: &Agent) -> Migration {
    agent.wait_for_path("primary").unwrap();
    lab.unplug().unwrap();
    agent.wait_for_path("standby").unwrap();
    // The switch learns where the guest is before it moves.
    assert_eq!(udp_probes(lab, STACK_V4.into(), 5, 64).unwrap(), 5);
    assert_eq!(
        lab.fdb_port(Ns::Tor, lab.mac()).unwrap().as_deref(),
        Some(TOR_SRC_PORT)
    );
    let capture = lab
        .spawn_in(Ns::Peer, || {
            capture::capture(PEER_IF, Duration::from_millis(5000))
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let migrated = Instant::now();
    // Moving the far end takes the standby's carrier away and back.
    lab.migrate().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let tor_port = lab.fdb_port(Ns::Tor, lab.mac()).unwrap();
    let probes_answered = udp_probes(lab, STACK_V4.into(), 5, 64).unwrap();
    let replugged = Instant::now();
    lab.replug().unwrap();
    agent.wait_for_path("primary").unwrap();
    let frames = capture.join().unwrap().unwrap();
    Migration {
        frames: frames
            .into_iter()
            .filter(|(at, _)| *at >= migrated)
            .collect(),
        replugged,
        tor_port,
        probes_answered,
    }
}

#[test]
fn announces_after_migration_on_qemus_schedule_when_the_device_does_not() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let agent = start(&lab, false, &default_pair());
    let seen = silent_migration(&lab, &agent);
    let frames = &seen.frames;
    let mac = lab.mac();
    // One announce at each stage of the migration: the standby's carrier
    // back on the destination host, then the primary's return.
    for (stage, before_replug) in [("migrate", true), ("replug", false)] {
        let of_stage = |at: &Instant| (*at < seen.replugged) == before_replug;
        let garps: Vec<Instant> = frames
            .iter()
            .filter(|(at, f)| of_stage(at) && *f == Announce::GratuitousArp { mac, ip: STACK_V4 })
            .map(|(at, _)| *at)
            .collect();
        let nas = frames
            .iter()
            .filter(|(at, f)| of_stage(at) && *f == Announce::UnsolicitedNa { mac, ip: STACK_V6 })
            .count();
        let gaps: Vec<u128> = garps
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        println!(
            "after the {stage}: gratuitous ARPs: {}, gaps {gaps:?} ms; NAs: {nas}",
            garps.len()
        );
        assert_eq!(
            garps.len(),
            5,
            "QEMU's 5 rounds after the {stage}: {frames:?}\n{}",
            agent.log()
        );
        assert_eq!(nas, 5, "one NA per round for the IPv6 address");
        // QEMU's schedule: 50, 150, 250, 350 ms apart (loose: a loaded CI box).
        for (gap, want) in gaps.iter().zip([50u128, 150, 250, 350]) {
            assert!(
                *gap + 20 >= want && *gap <= want + 150,
                "gap {gap} ms, want about {want}: {gaps:?}"
            );
        }
    }
    // The standby's carrier came back on the destination host: the switch
    // learned where the MAC lives now, without FDB ageing and before the
    // replug, and the peer reaches the stack again.
    assert_eq!(seen.tor_port.as_deref(), Some(TOR_DST_PORT));
    assert_eq!(seen.probes_answered, 5);
    assert_eq!(udp_probes(&lab, STACK_V4.into(), 5, 64).unwrap(), 5);
    let pair = agent.pair().unwrap();
    assert_eq!(pair.migrations_detected, 1, "one migration: {pair:?}");
    assert_eq!(pair.announces_sent, 20, "{pair:?}");
    let log = agent.log();
    for signal in ["standby-carrier", "primary-replugged"] {
        assert!(log.contains(&format!("signal={signal}")), "{log}");
    }
}

#[test]
fn no_announce_when_the_device_announces_and_policy_is_auto() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let agent = start(&lab, true, &default_pair());
    assert_eq!(agent.pair().unwrap().guest_announce, Some(true));
    let seen = silent_migration(&lab, &agent);
    let mac = lab.mac();
    let ours: Vec<_> = seen
        .frames
        .iter()
        .filter(|(_, f)| match f {
            Announce::GratuitousArp { mac: m, .. } | Announce::UnsolicitedNa { mac: m, .. } => {
                *m == mac
            }
            Announce::Rarp { .. } => false,
        })
        .collect();
    assert!(ours.is_empty(), "the agent announced: {ours:?}");
    let pair = agent.pair().unwrap();
    assert!(pair.migrations_detected >= 1, "still detected: {pair:?}");
    assert_eq!(pair.announces_sent, 0);
    // Without an announce the switch still points at the old host: the
    // blackhole an announce fixes (the lab's guest kernel has IPv6 off, so
    // no chatter of its own teaches the switch either).
    assert_eq!(seen.tor_port.as_deref(), Some(TOR_SRC_PORT));
    assert_eq!(seen.probes_answered, 0);
}

/// The next sd_notify message the daemon sent to `socket`.
fn notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification within 5 s");
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}

/// The next one that is neither a watchdog feed nor a status line.
fn next_state(socket: &std::os::unix::net::UnixDatagram) -> String {
    loop {
        let message = notification(socket);
        if message != "WATCHDOG=1" && !message.starts_with("STATUS=") {
            return message;
        }
    }
}

#[test]
fn tells_systemd_ready_reloading_stopping_and_feeds_the_watchdog() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // As systemd sets it with WatchdogSec=400ms: fed every 200 ms.
    let setup = Setup::new(false, &default_pair())
        .env("NOTIFY_SOCKET", notify.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000");
    let mut agent = Agent::start_with(&lab, Path::new(BIN), &setup).unwrap();
    assert_eq!(next_state(&socket), "READY=1");
    let started = Instant::now();
    let (mut fed, mut statuses) = (0, Vec::new());
    while started.elapsed() < Duration::from_millis(1500) {
        match notification(&socket) {
            feed if feed == "WATCHDOG=1" => fed += 1,
            status if status.starts_with("STATUS=") => statuses.push(status),
            other => panic!("unexpected notification {other:?}"),
        }
    }
    println!(
        "watchdog fed {fed} times in {:?}; status lines {statuses:?}",
        started.elapsed()
    );
    assert!((5..=12).contains(&fed), "{fed} in 1.5 s at a 200 ms period");
    // `systemctl status` shows where the pair is, once it is on the VF
    // (already, or soon on a loaded box).
    let on_vf = "STATUS=virtio0: primary on vf0 (xdp-driver)";
    let deadline = Instant::now() + Duration::from_secs(10);
    while statuses.last().map(String::as_str) != Some(on_vf) && Instant::now() < deadline {
        let message = notification(&socket);
        if message.starts_with("STATUS=") {
            statuses.push(message);
        }
    }
    assert_eq!(
        statuses.last().map(String::as_str),
        Some(on_vf),
        "{statuses:?}"
    );

    agent.signal(Signal::SIGHUP).unwrap();
    let reloading = next_state(&socket);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(next_state(&socket), "READY=1");
    assert_eq!(agent.wait_for_path("primary").unwrap().path, "primary");
    agent.stop().unwrap();
    assert_eq!(next_state(&socket), "STOPPING=1");
}

#[test]
fn bad_configs_exit_nonzero_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[[pair]\naddresses = []", "expected"),
        ("[[pair]]\naddresses = [\"10.0.0.2/24\"]\nbogus = 1\n", "bogus"),
        ("[[pair]]\naddresses = [\"10.0.0.300/24\"]\n", "10.0.0.300/24"),
        (
            "[[pair]]\nname = \"a\"\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\nname = \"a\"\naddresses = [\"10.0.1.2/24\"]\n",
            "already used",
        ),
        (
            "[[pair]]\nstandby = \"ens3\"\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\nstandby = \"ens3\"\naddresses = [\"10.0.1.2/24\"]\n",
            "ens3",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was accepted");
        assert!(
            stderr.contains(needle),
            "case {i}: {needle:?} not in {stderr}"
        );
        assert!(
            stderr.contains(&format!("bad{i}.toml")),
            "case {i} names no file: {stderr}"
        );
    }
}

#[test]
fn socket_survives_bad_clients_and_refuses_non_root_announce() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let agent = start(&lab, false, &default_pair());
    let raw = |bytes: &[u8], shutdown: bool| {
        let mut s = UnixStream::connect(agent.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(bytes);
        if shutdown {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    assert!(raw(b"garbage\n", false).contains("\"ok\":false"));
    assert!(raw(&[0xff, 0xfe, b'\n'], false).contains("\"ok\":false"));
    let _ = raw(&vec![b'x'; 100_000], false);
    let _ = raw(b"{\"command\":\"sta", true);
    // A client that connects and never writes does not block the others.
    let _idle = UnixStream::connect(agent.socket()).unwrap();
    assert!(agent.status().is_some(), "still serving\n{}", agent.log());

    // The socket is 0660 root:root here; a non-root user in root's group
    // may read status but not announce.
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=0", "--clear-groups", BIN])
            .args(args)
            .arg("--socket")
            .arg(agent.socket())
            .output()
            .unwrap()
    };
    let status = as_nobody(&["status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let announce = as_nobody(&["announce"]);
    assert!(!announce.status.success());
    assert!(
        String::from_utf8_lossy(&announce.stderr).contains("root"),
        "{announce:?}"
    );
    assert_eq!(
        agent.pair().unwrap().announces_sent,
        0,
        "a refused announce sent nothing"
    );
}

#[test]
fn sigterm_detaches_xdp_and_removes_the_socket() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let mut agent = start(&lab, false, &default_pair());
    agent.wait_for_path("primary").unwrap();
    let links = lab.ip(Ns::Guest, &["link", "show"]).unwrap();
    assert!(
        links.contains("xdp"),
        "programs attached while running: {links}"
    );
    let exit = agent.stop().unwrap();
    assert!(exit.success(), "exit {exit:?}\n{}", agent.log());
    let links = lab.ip(Ns::Guest, &["link", "show"]).unwrap();
    assert!(
        !links.contains("xdp"),
        "an XDP program was left behind: {links}"
    );
    assert!(!agent.socket().exists(), "the socket file was left behind");
}

#[test]
fn sighup_moves_an_address_and_keeps_connections_on_the_others() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let agent = start(
        &lab,
        false,
        &pair_config(&["10.213.0.20/24", "10.213.0.30/24"]),
    );
    agent.wait_for_path("primary").unwrap();
    let old: IpAddr = Ipv4Addr::new(10, 213, 0, 30).into();
    let new: IpAddr = Ipv4Addr::new(10, 213, 0, 31).into();
    assert_eq!(udp_probes(&lab, old, 3, 64).unwrap(), 3);

    // A connection on the address that stays, open across the reload.
    let (to_peer, from_test) = std::sync::mpsc::channel::<Vec<u8>>();
    let (to_test, from_peer) = std::sync::mpsc::channel::<Vec<u8>>();
    let conn = lab
        .spawn_in(Ns::Peer, move || {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::new(STACK_V4.into(), ECHO_PORT),
                Duration::from_secs(5),
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            while let Ok(msg) = from_test.recv() {
                s.write_all(&msg).unwrap();
                let mut back = vec![0; msg.len()];
                s.read_exact(&mut back).unwrap();
                to_test.send(back).unwrap();
            }
        })
        .unwrap();
    let echo = |msg: &[u8]| {
        to_peer.send(msg.to_vec()).unwrap();
        from_peer.recv_timeout(Duration::from_secs(10)).unwrap()
    };
    assert_eq!(echo(b"before"), b"before");

    agent
        .write_config(&pair_config(&["10.213.0.20/24", "10.213.0.31/24"]))
        .unwrap();
    agent.signal(Signal::SIGHUP).unwrap();
    agent
        .wait_for(Duration::from_secs(5), "the new address", |s| {
            s.pairs[0]
                .addresses
                .iter()
                .any(|a| a.starts_with("10.213.0.31"))
        })
        .unwrap();
    assert_eq!(
        udp_probes(&lab, new, 3, 64).unwrap(),
        3,
        "the new address answers"
    );
    assert_eq!(
        udp_probes(&lab, old, 3, 64).unwrap(),
        0,
        "the old one is gone"
    );
    assert_eq!(echo(b"after the reload"), b"after the reload");

    // An invalid config is refused and the running one kept.
    fs::write(agent.dir().join("vfailover.toml"), "[[pair]]\nbogus = 1\n").unwrap();
    agent.signal(Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.log().contains("reload refused"), "{}", agent.log());
    assert_eq!(echo(b"still here"), b"still here");

    // So is an MTU change, which only a restart applies, and it says so.
    let mtu = format!(
        "{}mtu = 1400\n",
        pair_config(&["10.213.0.20/24", "10.213.0.31/24"])
    );
    agent.write_config(&mtu).unwrap();
    agent.signal(Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        agent
            .log()
            .contains("mtu (1500 → 1400) cannot change on reload"),
        "{}",
        agent.log()
    );
    assert_eq!(echo(b"mtu kept"), b"mtu kept");
    drop(to_peer);
    conn.join().unwrap();
}
