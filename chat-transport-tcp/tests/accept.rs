//! The accept loop against a process out of file descriptors (EMFILE): it pauses instead of
//! dying or spinning, and serves the waiting connection once descriptors are free again.
//! Alone in its test binary, because it lowers the whole process's descriptor limit.

mod common;

use std::time::Duration;

use common::{server, Raw};
use serde_json::json;
use tokio::io::AsyncReadExt;

fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    limit
}

fn set_nofile(limit: &libc::rlimit) {
    // SAFETY: setrlimit only reads the struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) }, 0);
}

#[tokio::test]
async fn accept_survives_running_out_of_file_descriptors() {
    let (_engine, addr) = server().await;
    let original = nofile();
    set_nofile(&libc::rlimit { rlim_cur: original.rlim_cur.min(512), rlim_max: original.rlim_max });

    // Take every descriptor but one, which the client's socket takes: the server's accept
    // then fails with EMFILE while the connection waits in the backlog.
    let mut hog = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hog.push(file);
    }
    hog.pop();
    let mut raw = Raw::connect(addr).await;
    raw.send_json(json!({"type": "hello", "id": 1, "protocol": 1, "user": "alice"})).await;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), raw.stream.read(&mut byte)).await;
    assert!(early.is_err(), "no session while the server has no descriptor for it");

    drop(hog);
    set_nofile(&original);
    assert_eq!(raw.recv().await["type"], "welcome");
    raw.expect_usable(2).await;
}
