//! Limits of the HTTP side on the real server: slow clients cut off, the connection
//! cap, oversized heads refused.

use crate::helpers::TestApp;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Whether the server closed `stream` within `within` (a read of 0 bytes or an error).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_its_head_too_slowly_is_cut_off() {
    let app = TestApp::spawn_with(&["--sim-speed", "0", "--client-timeout", "1s"]).await;
    let mut slow = TcpStream::connect(app.http).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)),
        "still open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    // Others are served meanwhile and after.
    assert_eq!(app.call("DescribeInstances", &[]).await["code"], 0);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let app = TestApp::spawn_with(&["--sim-speed", "0", "--max-connections", "2"]).await;
    let _first = TcpStream::connect(app.http).unwrap();
    let _second = TcpStream::connect(app.http).unwrap();
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(app.http).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok();
    assert!(
        closed_within(&mut third, Duration::from_secs(2)),
        "the third was served"
    );
    drop(_first);
    drop(_second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.call("DescribeInstances", &[]).await["code"],
        0,
        "places are given back"
    );
}

#[tokio::test]
async fn too_many_headers_are_refused_by_http() {
    let app = TestApp::spawn().await;
    let mut request = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        request.push_str(&format!("X-Filler-{i}: y\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(app.http).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_client_timeout() {
    let app = TestApp::spawn_with(&["--sim-speed", "0", "--client-timeout", "1s"]).await;
    let mut idle = TcpStream::connect(app.http).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut first = [0u8; 64];
    let read = idle.read(&mut first).unwrap();
    assert!(first[..read].starts_with(b"HTTP/1.1 200"), "answered first");
    // Kept alive, then closed once it has been idle for the client timeout.
    let started = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)),
        "still open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}
