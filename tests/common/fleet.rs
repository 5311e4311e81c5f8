//! A fleet on one machine for tests and benches: a real redis-server (Debian's, which the test command
//! installs) on a loopback port with AOF on, and "hosts" that are store directories, each with its own
//! agent (`ms-auth fleet sync`, a child process).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ms_auth::Store;

pub const SECRET: &str = "a fleet secret of more than sixteen bytes";

/// A redis-server on a free loopback port with AOF on, in its own directory; stopped on drop.
pub struct Redis {
    pub dir: PathBuf,
    pub port: u16,
    pub password: Option<String>,
    /// TLS only (no plain port): the directory holding ca.crt, server.crt and server.key.
    pub tls: Option<PathBuf>,
    pub child: Option<Child>,
}

impl Redis {
    pub fn start(dir: &Path, password: Option<&str>) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis =
            Redis { dir: dir.to_path_buf(), port, password: password.map(str::to_string), tls: None, child: None };
        redis.restart();
        redis
    }

    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null());
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(certs) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(certs.join("server.crt"))
                .arg("--tls-key-file")
                .arg(certs.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.crt")),
        };
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("redis-server is installed (scripts/test.sh installs it)"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.client().get_connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            child.wait().unwrap();
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()).unwrap(),
            Some(certs) => {
                let root_cert = Some(std::fs::read(certs.join("ca.crt")).unwrap());
                redis::Client::build_with_tls(self.url(), redis::TlsCertificates { client_tls: None, root_cert })
                    .unwrap()
            }
        }
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A host: a store directory and its agent.
pub struct Host {
    pub db: PathBuf,
    pub name: String,
    pub agent: Option<Child>,
    pub secret: PathBuf,
    pub log: PathBuf,
}

impl Host {
    pub fn new(root: &Path, name: &str) -> Host {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = root.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        Host { db: dir.join("keys.db"), name: name.into(), agent: None, secret, log: dir.join("agent.log") }
    }

    pub fn start_agent(&mut self, url: &str) {
        self.start_agent_with(url, &[]);
    }

    pub fn start_agent_with(&mut self, url: &str, extra: &[&std::ffi::OsStr]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
            .arg("--db")
            .arg(&self.db)
            .args(["fleet", "sync", "--redis", url, "--fleet", "test", "--host", &self.name, "--secret-file"])
            .arg(&self.secret)
            .args(extra)
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// SIGTERM, and the agent's exit status.
    pub fn stop_agent(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.agent.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Until the agent has made the store a fleet member and reached Redis: a check before that is a
    /// standalone store's (it counts no lease).
    pub fn wait_until_in_the_fleet(&self) {
        let joined = within(Duration::from_secs(10), || self.log().contains("connected to Redis"));
        assert!(joined.is_some(), "{}: {}", self.name, self.log());
    }

    pub fn store(&self) -> Store {
        Store::open(&self.db).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `f` is true; how long it took.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

pub fn fleet(n: usize) -> (tempfile::TempDir, Redis, Vec<Host>) {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let mut hosts: Vec<Host> = (0..n).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    for h in &mut hosts {
        h.start_agent(&redis.url());
    }
    for h in &hosts {
        h.wait_until_in_the_fleet();
    }
    (dir, redis, hosts)
}
