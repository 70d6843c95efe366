//! `run()` on a real socket bound to port 0: it serves, refuses an oversized
//! body from its declared length before the body is sent, and stops when the
//! shutdown future completes.

use std::time::Duration;

use replikv_kv_backend::{run, AppState, Config, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Sends raw bytes on a fresh connection and reads until the server closes it.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the server answers within 10 s")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn run_serves_on_port_0_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path());
    let store = Store::open(&config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, AppState::new(store, &config), async {
        let _ = stopped.await;
    }));

    let body = r#"{"k":"v"}"#;
    let post = format!(
        "POST /api/9/http/keyvals/default HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = exchange(addr, post.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("x-replikv-seq: 1"), "{response}");

    // Only the headers are sent: the 413 comes from the declared length alone.
    // The connection is kept alive by the client, yet the server closes it (a
    // proxy must not send another request after a body that was never read).
    let huge = "POST /api/9/http/keyvals/default HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n";
    let response = exchange(addr, huge.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    assert!(
        response.contains(r#""code":"RequestEntityTooLarge""#),
        "{response}"
    );

    let get = "GET /api/9/http/keyvals/default HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let response = exchange(addr, get.as_bytes()).await;
    assert!(response.ends_with(r#"{"k":"v"}"#), "{response}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();
    // The store is closed with the server: the data dir opens again.
    let store = Store::open(&config).unwrap();
    assert_eq!(store.read(|d| d.meta.seq), 1);
}
