//! NGINX keyval state files: `GET /replikv/state/...` exports a zone, and
//! `kv-backend import` loads one through the API on a real socket, as a
//! normal write (seq, replication log), all or nothing.

use std::io::Write;
use std::process::Command;

use replikv_kv_backend::config::parse_zone_spec;
use replikv_kv_backend::tool::{self, ImportArgs, ImportSummary, Target};
use replikv_kv_backend::writer::now_ms;
use replikv_kv_backend::{run, AppState, Config, Store};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A backend served on port 0 until dropped.
struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    for spec in ["one:1m:timeout=1h", "ip:64k:type=ip", "stream:s:64k"] {
        config = config.with_zone(parse_zone_spec(spec).unwrap());
    }
    config.max_body = 4096;
    let store = Store::open(&config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run(listener, AppState::new(store, &config), async {
        let _ = stopped.await;
    }));
    Server {
        url,
        stop: Some(stop),
        _dir: dir,
    }
}

fn target(server: &Server, zone: &str) -> Target {
    Target {
        url: server.url.clone(),
        zone: zone.into(),
        stream: false,
    }
}

async fn get(url: String, path: &str) -> (u16, Value) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let response = tool::send(&url, "GET", &path, None).unwrap();
        let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status, body)
    })
    .await
    .unwrap()
}

async fn import(args: ImportArgs, file: String) -> Result<ImportSummary, String> {
    tokio::task::spawn_blocking(move || tool::import(&args, file.as_bytes()))
        .await
        .unwrap()
}

fn import_args(target: Target) -> ImportArgs {
    ImportArgs {
        target,
        replace: false,
        max_body: 1 << 20,
        file: "-".into(),
    }
}

/// An NGINX state file with a live, an expired and an instant-less entry goes
/// in as ONE write; expired entries are left out; instants are kept to within
/// the request's latency; the export gives the same file back.
#[tokio::test]
async fn a_state_file_is_imported_as_one_write_and_exported_back() {
    let server = serve().await;
    let now = now_ms();
    let later = now + 600_000;
    let file = json!({
        "live": {"value": "1", "expire": later},
        "gone": {"value": "2", "expire": now - 1},
        "fresh": {"value": "3"},
        "plain": "4",
    })
    .to_string();
    let summary = import(import_args(target(&server, "one")), file)
        .await
        .unwrap();
    assert_eq!(
        summary,
        ImportSummary {
            imported: 3,
            skipped: 1,
            posts: 1
        }
    );
    let (_, zone) = get(server.url.clone(), "/api/9/http/keyvals/one").await;
    assert_eq!(zone, json!({"live":"1","fresh":"3","plain":"4"}));
    let (_, status) = get(server.url.clone(), "/replikv/status").await;
    assert_eq!(status["seq"], 1, "one write, one seq");
    let (_, log) = get(server.url.clone(), "/replikv/log?after=0").await;
    assert_eq!(log["entries"][0]["effects"].as_array().unwrap().len(), 3);

    let (status, exported) = get(server.url.clone(), "/replikv/state/http/one").await;
    assert_eq!(status, 200);
    let live_at = exported["live"]["expire"].as_u64().unwrap();
    assert!(
        (later..later + 5_000).contains(&live_at),
        "{live_at} vs {later}"
    );
    let fresh_at = exported["fresh"]["expire"].as_u64().unwrap();
    assert!(fresh_at >= now + 3_600_000, "zone timeout from the import");
    assert_eq!(exported["plain"]["value"], "4");
    assert_eq!(exported.as_object().unwrap().len(), 3);

    // Into a second zone and back: the same entries.
    let tool_export = {
        let target = target(&server, "one");
        tokio::task::spawn_blocking(move || tool::export(&target))
            .await
            .unwrap()
            .unwrap()
    };
    let mut args = import_args(target(&server, "default"));
    args.replace = true;
    let summary = import(args, String::from_utf8(tool_export).unwrap())
        .await
        .unwrap();
    assert_eq!(summary.imported, 3);
    let (_, default) = get(server.url.clone(), "/replikv/state/http/default").await;
    // Zone `default` has no timeout: instants are dropped, as NGINX does on load.
    assert_eq!(
        default,
        json!({"fresh":{"value":"3"},"live":{"value":"1"},"plain":{"value":"4"}})
    );
}

/// A zone that is not empty is refused unless --replace; a bad entry refuses
/// the whole import; an import larger than --max-body goes one key per POST.
#[tokio::test]
async fn imports_refuse_non_empty_zones_and_bad_entries_and_split_large_files() {
    let server = serve().await;
    let one = r#"{"a":"1"}"#.to_owned();
    import(import_args(target(&server, "one")), one.clone())
        .await
        .unwrap();
    let error = import(import_args(target(&server, "one")), one)
        .await
        .unwrap_err();
    assert!(error.contains("--replace"), "{error}");

    let error = import(
        import_args(target(&server, "ip")),
        r#"{"10.0.0.0/8":"a","not-an-ip":"b"}"#.into(),
    )
    .await
    .unwrap_err();
    assert!(error.contains("KeyvalFormatError"), "{error}");
    let (_, ip) = get(server.url.clone(), "/api/9/http/keyvals/ip").await;
    assert_eq!(ip, json!({}), "all or nothing");

    let error = import(import_args(target(&server, "nozone")), "{}".into())
        .await
        .unwrap_err();
    assert!(error.contains("not configured"), "{error}");
    let error = import(import_args(target(&server, "ip")), "[1]".into())
        .await
        .unwrap_err();
    assert!(error.contains("invalid state file"), "{error}");

    let big: serde_json::Map<String, Value> = (0..100)
        .map(|i| (format!("10.0.0.{i}"), json!("x".repeat(40))))
        .collect();
    let mut args = import_args(target(&server, "ip"));
    args.max_body = 1000;
    let summary = import(args, Value::Object(big).to_string()).await.unwrap();
    assert_eq!(summary.posts, 100);
    let (_, ip) = get(server.url.clone(), "/api/9/http/keyvals/ip").await;
    assert_eq!(ip.as_object().unwrap().len(), 100);

    let mut stream = target(&server, "s");
    stream.stream = true;
    import(import_args(stream), r#"{"k":{"value":"v"}}"#.into())
        .await
        .unwrap();
    let (_, s) = get(server.url.clone(), "/replikv/state/stream/s").await;
    assert_eq!(s, json!({"k":{"value":"v"}}));
    let (status, _) = get(server.url.clone(), "/replikv/state/stream/one").await;
    assert_eq!(status, 404);
    let (status, _) = get(server.url.clone(), "/replikv/state/tcp/one").await;
    assert_eq!(status, 404);
}

/// The binary's `export` and `import` subcommands, end to end.
#[tokio::test]
async fn the_binary_exports_and_imports() {
    let server = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.keyval");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(br#"{"a":{"value":"1"},"b":{"value":"2"}}"#)
        .unwrap();
    let url = server.url.clone();
    let run = move |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_kv-backend"));
            command.args(&args).arg("--url").arg(url);
            let child = command.output().unwrap();
            (child.status.success(), child.stdout, child.stderr)
        })
    };
    let (ok, _, stderr) = run(vec![
        "import".into(),
        "--zone".into(),
        "one".into(),
        file.display().to_string(),
    ])
    .await
    .unwrap();
    assert!(ok, "{}", String::from_utf8_lossy(&stderr));
    assert!(String::from_utf8_lossy(&stderr).contains("imported 2 keys"));
    let (ok, stdout, stderr) = run(vec!["export".into(), "--zone".into(), "one".into()])
        .await
        .unwrap();
    assert!(ok, "{}", String::from_utf8_lossy(&stderr));
    let exported: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(exported["a"]["value"], "1");
    assert!(exported["b"]["expire"].as_u64().unwrap() > now_ms());
    let (ok, _, stderr) = run(vec!["export".into(), "--zone".into(), "nozone".into()])
        .await
        .unwrap();
    assert!(!ok);
    assert!(
        String::from_utf8_lossy(&stderr).contains("KeyvalNotFound"),
        "{}",
        String::from_utf8_lossy(&stderr)
    );
}
