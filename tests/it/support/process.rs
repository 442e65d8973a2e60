//! The real `gatehouse` binary, started as a process on a loopback port.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `gatehouse` command in `cwd` with a clean environment: nothing of the caller's
/// `GATEHOUSE_*` leaks in.
pub fn gatehouse(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// Runs `users add NAME --password-stdin` with `cmd` (a [`gatehouse`] command, its settings
/// set), typing `password`; panics unless it succeeds.
pub fn add_user(mut cmd: Command, name: &str, password: &str) {
    use std::io::Write;
    let mut child = cmd
        .args(["users", "add", name, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("users add");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write");
    assert!(child.wait().expect("wait").success(), "users add {name}");
}

/// A server process that is killed when this is dropped (a failed assertion included).
pub struct Running(pub Option<Child>);

impl Running {
    /// The process, to stop it on purpose.
    pub fn take(&mut self) -> Child {
        self.0.take().expect("still running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the server at `base` answers `/health` with 200; panics if it exits first or
/// takes over 60 s.
pub fn wait_healthy(child: &mut Child, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("server exited early with {status}");
        }
        if let Ok(res) = raw_http::blocking_get_status(&format!("{base}/health")) {
            if res == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "server did not become healthy in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tiny blocking HTTP/1.1 GET over a TcpStream: the client side of this test is independent
/// of the server's HTTP stack.
pub mod raw_http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub fn get(url: &str) -> std::io::Result<(u16, String, String)> {
        let rest = url.strip_prefix("http://").expect("http URL");
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .expect("path");
        let mut stream = TcpStream::connect(host)?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, head.to_ascii_lowercase(), body.to_owned()))
    }

    pub fn blocking_get_status(url: &str) -> std::io::Result<u16> {
        get(url).map(|(s, _, _)| s)
    }
}

/// Sends SIGTERM and waits (at most 15 s) for the process to exit; its output.
pub fn stop(child: Child) -> Output {
    sigterm(&child);
    wait_exit(child, Duration::from_secs(15))
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits at most `bound` for `child` to exit (else kills it and panics); its output.
pub fn wait_exit(mut child: Child, bound: Duration) -> Output {
    let deadline = Instant::now() + bound;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit within {bound:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
