//! A real `redis-server` on a free loopback port, persistence off, killed on
//! drop. Tests that need it fail (never skip) when it is missing.

use super::forwarder::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Append-only file with fsync on every write, for tests that kill and
    /// restart Redis and need its data back (as production would have).
    aof: bool,
}

impl RedisServer {
    /// Persistence off.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// With an fsync-always append-only file, to survive a SIGKILL.
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir,
            aof,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if self.aof { "yes" } else { "no" },
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); install it (`apt-get install redis-server`; `make test` does)"
                )
            });
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if self.cmd(&["PING"]).as_deref() == Some("PONG") {
                return;
            }
            assert!(Instant::now() < end, "redis-server did not answer PING");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (data survives only with [`RedisServer::start_persistent`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a command with redis-cli; its trimmed output.
    pub fn cmd(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
