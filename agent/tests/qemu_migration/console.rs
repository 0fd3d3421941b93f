//! The guest's serial console: a reader thread keeps every line with its arrival time;
//! commands run in a shell wrapped in unique sentinels.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self};
use std::time::{Duration, Instant};

use crate::qmp::connect_when_there;
use crate::Result;

/// Console lines with their arrival times, and a condvar to wait for more.
pub type SharedLines = Arc<(Mutex<Vec<(Instant, String)>>, Condvar)>;

pub struct Console {
    pub stream: UnixStream,
    pub lines: SharedLines,
    pub seq: u64,
    pub tag: String,
    /// Set when the test stopped the guest (see `migrate`): a command waits no longer.
    pub stopped: Arc<AtomicBool>,
}

impl Console {
    pub fn connect(
        path: &Path,
        log: PathBuf,
        tag: &str,
        stopped: Arc<AtomicBool>,
    ) -> Result<Console> {
        let stream = connect_when_there(path)?;
        let lines: SharedLines = Arc::default();
        let l = lines.clone();
        let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
        thread::spawn(move || {
            let mut log = File::create(log).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&chunk[..n]);
                }
                buf.extend_from_slice(&chunk[..n]);
                let at = Instant::now();
                let mut g = l.0.lock().unwrap();
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let s = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    g.push((at, s));
                }
                drop(g);
                l.1.notify_all();
            }
        });
        Ok(Console {
            stream,
            lines,
            seq: 0,
            tag: tag.to_string(),
            stopped,
        })
    }

    pub fn len(&self) -> usize {
        self.lines.0.lock().unwrap().len()
    }

    pub fn lines_since(&self, from: usize) -> Vec<(Instant, String)> {
        self.lines.0.lock().unwrap()[from..].to_vec()
    }

    /// Index and time of the first line from `from` on matching `pred`.
    pub fn wait_line(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(usize, Instant, String)> {
        let (lock, cv) = &*self.lines;
        let deadline = Instant::now() + timeout;
        let mut g = lock.lock().unwrap();
        loop {
            if let Some((i, (at, s))) = g.iter().enumerate().skip(from).find(|(_, (_, s))| pred(s))
            {
                return Some((i, *at, s.clone()));
            }
            if self.stopped.load(Ordering::SeqCst) {
                return None;
            }
            // In slices: a stopped guest is noticed without a line to wake us.
            let left = deadline.checked_duration_since(Instant::now())?;
            g = cv
                .wait_timeout(g, left.min(Duration::from_millis(50)))
                .unwrap()
                .0;
        }
    }

    /// Run `cmd` in the guest's shell; its exit code and output (without `@@MON` lines).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        self.seq += 1;
        let n = self.seq;
        let from = self.len();
        // Quoted halves: the sentinel as typed never equals the sentinel as printed.
        // The leading ^U (the tty's kill character) drops a partial line left in the
        // guest's tty: a command cut by a migration (its tail stays in the source QEMU)
        // would otherwise be joined to this one, and an odd `"` in it swallows every
        // later command.
        let line = format!(
            "\x15echo \"@@\"\"B{n}\"; {{ {cmd} ; }} > /tmp/out.{n} 2>&1; r=$?; cat /tmp/out.{n}; \
             rm -f /tmp/out.{n}; echo \"@@\"\"E{n} $r\"\n"
        );
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| format!("console {}: {e}", self.tag))?;
        let begin = format!("@@B{n}");
        let end = format!("@@E{n} ");
        let gone = |what: &str| {
            if self.stopped.load(Ordering::SeqCst) {
                format!("{}: the guest was stopped during `{cmd}`", self.tag)
            } else {
                format!("{}: `{cmd}` did not {what} in {timeout:?}", self.tag)
            }
        };
        let (b, _, _) = self
            .wait_line(from, timeout, |s| s == begin)
            .ok_or_else(|| gone("start"))?;
        let (e, _, last) = self
            .wait_line(b, timeout, |s| s.starts_with(&end))
            .ok_or_else(|| gone("finish"))?;
        let rc = last[end.len()..].trim().parse().unwrap_or(-1);
        let out = self.lines.0.lock().unwrap()[b + 1..e]
            .iter()
            .map(|(_, s)| s.as_str())
            .filter(|s| !s.starts_with("@@MON") && !s.starts_with("@@VFO"))
            .collect::<Vec<_>>()
            .join("\n");
        Ok((rc, out))
    }

    pub fn must(&mut self, cmd: &str) -> String {
        match self.run(cmd, Duration::from_secs(30)) {
            Ok((0, out)) => out,
            Ok((rc, out)) => panic!("{}: `{cmd}` exited {rc}: {out}", self.tag),
            Err(e) => panic!("{e}"),
        }
    }
}
