//! QMP: commands with replies, events kept with their arrival times.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::migration::PAUSED_COPY_BANDWIDTH;
use crate::Result;

#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    pub name: String,
    pub data: Value,
}

pub struct Qmp {
    /// Commands are written whole under this lock: the reader thread writes too.
    pub writer: Arc<Mutex<UnixStream>>,
    pub replies: Arc<(Mutex<Vec<Value>>, Condvar)>,
    pub events: Arc<(Mutex<Vec<Event>>, Condvar)>,
    pub stop_on_active: Arc<AtomicBool>,
}

/// The `id` of the commands the reader thread sends by itself; their replies are no caller's.
pub const AUTO_ID: &str = "stop-on-active";

impl Qmp {
    /// `guest_stopped` is set when the reader thread stops the guest by itself.
    pub fn connect(path: &Path, guest_stopped: Arc<AtomicBool>) -> Result<Qmp> {
        let stream = connect_when_there(path)?;
        let replies: Arc<(Mutex<Vec<Value>>, Condvar)> = Arc::default();
        let events: Arc<(Mutex<Vec<Event>>, Condvar)> = Arc::default();
        let stop_on_active = Arc::new(AtomicBool::new(false));
        let writer = Arc::new(Mutex::new(stream.try_clone().map_err(|e| e.to_string())?));
        let (r, e, stop, w) = (
            replies.clone(),
            events.clone(),
            stop_on_active.clone(),
            writer.clone(),
        );
        let reader = BufReader::new(stream);
        thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(name) = v.get("event").and_then(Value::as_str) {
                    let data = v.get("data").cloned().unwrap_or(Value::Null);
                    // Stopped here, not by a caller polling events: no page is sent while the
                    // guest still runs (see `migrate`).
                    if name == "MIGRATION"
                        && data["status"] == "active"
                        && stop.swap(false, Ordering::SeqCst)
                    {
                        let mut w = w.lock().unwrap();
                        let _ = writeln!(w, "{}", json!({"execute": "stop", "id": AUTO_ID}));
                        guest_stopped.store(true, Ordering::SeqCst);
                        let fast = json!({"max-bandwidth": PAUSED_COPY_BANDWIDTH});
                        let msg = json!({"execute": "migrate-set-parameters", "arguments": fast,
                                         "id": AUTO_ID});
                        let _ = writeln!(w, "{msg}");
                    }
                    e.0.lock().unwrap().push(Event {
                        at,
                        name: name.to_string(),
                        data,
                    });
                    e.1.notify_all();
                } else if v.get("QMP").is_none() && v["id"] != AUTO_ID {
                    r.0.lock().unwrap().push(v);
                    r.1.notify_all();
                }
            }
        });
        let mut q = Qmp {
            writer,
            replies,
            events,
            stop_on_active,
        };
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    pub fn cmd(&mut self, name: &str, args: Value) -> Result<Value> {
        let msg = format!("{}\n", json!({"execute": name, "arguments": args}));
        self.writer
            .lock()
            .unwrap()
            .write_all(msg.as_bytes())
            .map_err(|e| format!("QMP {name}: {e}"))?;
        let (lock, cv) = &*self.replies;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut g = lock.lock().unwrap();
        while g.is_empty() {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or(format!("QMP {name}: no reply in 30 s"))?;
            g = cv.wait_timeout(g, left).unwrap().0;
        }
        let v = g.remove(0);
        match v.get("return") {
            Some(r) => Ok(r.clone()),
            None => Err(format!("QMP {name}: {v}")),
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.0.lock().unwrap().clone()
    }
}

pub fn connect_when_there(path: &Path) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(format!("{}: {e}", path.display())),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}
