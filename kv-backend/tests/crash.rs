//! The real binary under `kill -9`: several clients write concurrently, the
//! process is killed at a random moment and restarted on the same data dir.
//! Every acknowledged write must be there, and the seq must count exactly the
//! writes that are there (nothing half-applied). Also: SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A running `kv-backend` and the address it printed.
struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    fn start(data_dir: &Path) -> Backend {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kv-backend"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--zone",
                "default:8m",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the kv-backend binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, first) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let line = first
            .recv_timeout(Duration::from_secs(20))
            .expect("`listening on ADDR` within 20 s");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Backend { child, addr }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on its own connection; the status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, "").expect("GET answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

/// A pseudo-random number in `range` from the clock; enough to vary the kill moment.
fn random_in(range: std::ops::Range<u64>) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64;
    range.start + nanos % (range.end - range.start)
}

/// Every write answered 201 before `kill -9` is there after the restart.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(dir.path());
    let addr = backend.addr;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(15);
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let acked = Arc::clone(&acked);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let key = format!("c{client}-{i}");
                    let value = format!("v{i}");
                    let body = format!(r#"{{"{key}":"{value}"}}"#);
                    match http(addr, "POST", "/api/9/http/keyvals/default", &body) {
                        Ok((201, _)) => acked.lock().unwrap().push((key, value)),
                        Ok((status, body)) => panic!("unexpected {status}: {body}"),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    // Let writes flow, then kill at a random moment.
    let warmup = Instant::now() + Duration::from_secs(10);
    while acked.lock().unwrap().len() < 20 && Instant::now() < warmup {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(random_in(50..600)));
    let mut backend = backend;
    backend.child.kill().unwrap();
    backend.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    drop(backend);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 20,
        "only {} writes acknowledged",
        acked.len()
    );

    let backend = Backend::start(dir.path());
    let zone = get_json(backend.addr, "/api/9/http/keyvals/default");
    let zone = zone.as_object().unwrap();
    for (key, value) in &acked {
        assert_eq!(
            zone.get(key).and_then(Value::as_str),
            Some(value.as_str()),
            "{key} lost"
        );
    }
    let status = get_json(backend.addr, "/replikv/status");
    let seq = status["seq"].as_u64().unwrap();
    assert!(
        seq >= acked.len() as u64,
        "seq {seq} < {} acknowledged",
        acked.len()
    );
    assert_eq!(
        seq,
        zone.len() as u64,
        "every applied write is one key, whole"
    );
    eprintln!(
        "{} writes acknowledged before kill -9; seq {seq} after restart",
        acked.len()
    );
    // And the history goes on from there.
    let (status, _) = http(
        backend.addr,
        "POST",
        "/api/9/http/keyvals/default",
        r#"{"after":"1"}"#,
    )
    .unwrap();
    assert_eq!(status, 201);
    assert_eq!(get_json(backend.addr, "/replikv/status")["seq"], seq + 1);
}

/// SIGTERM ends the process cleanly (exit 0) and the data stays.
#[test]
fn sigterm_stops_the_backend_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::start(dir.path());
    let (status, _) = http(
        backend.addr,
        "POST",
        "/api/9/http/keyvals/default",
        r#"{"k":"v"}"#,
    )
    .unwrap();
    assert_eq!(status, 201);
    let term = Command::new("kill")
        .args(["-TERM", &backend.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = backend.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    drop(backend);
    let backend = Backend::start(dir.path());
    assert_eq!(
        get_json(backend.addr, "/api/9/http/keyvals/default?key=k"),
        serde_json::json!({"k":"v"})
    );
}
