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
        write_private(&secret, SECRET.as_bytes());
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
    redis.wait_for_the_lease_epoch();
    (dir, redis, hosts)
}

impl Redis {
    /// Waits (at most 10 s) until the fleet "test" has a lease epoch whose grace is over: a new fleet's
    /// agents grant nothing for its first 3 s (docs/fleet.md, "What Redis must be").
    pub fn wait_for_the_lease_epoch(&self) {
        let mut c = self.client().get_connection().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let until: Option<i64> = redis::cmd("HGET").arg("ms-auth:{test}:epoch").arg("until").query(&mut c).unwrap();
            let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut c).unwrap();
            if until.is_some_and(|u| u <= secs * 1000 + micros / 1000) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes a file only its owner may read (0600, whatever the umask), as agents want their secrets.
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Host {
    /// Starts the agent with more arguments and environment variables (its log emptied first, so that
    /// `wait_until_in_the_fleet` waits for this run).
    pub fn start_agent_env(&mut self, url: &str, extra: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) {
        std::fs::write(&self.log, "").unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
            .arg("--db")
            .arg(&self.db)
            .args(["fleet", "sync", "--redis", url, "--fleet", "test", "--host", &self.name, "--secret-file"])
            .arg(&self.secret)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// The agent's exit status if it exits within `limit` (it is then no longer this host's agent).
    pub fn agent_exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.agent.as_mut()?.try_wait().unwrap() {
                self.agent = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the agent (SIGKILL: no hand-back, no goodbye).
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            child.wait().unwrap();
        }
    }

    /// `ms-auth fleet ARGS` on this host's store: (success, stdout, stderr).
    pub fn fleet_command(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ms-auth"))
            .arg("--db")
            .arg(&self.db)
            .arg("fleet")
            .args(args)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }
}

/// An LD_PRELOAD library that moves the wall clock (CLOCK_REALTIME, gettimeofday, time) of the process
/// it is loaded into by `MS_AUTH_TEST_CLOCK_SHIFT_MS` milliseconds, built with the system's C compiler
/// into `dir`: a host whose clock is set wrong, without touching the machine's.
pub fn clock_shift_library(dir: &Path) -> PathBuf {
    let source = dir.join("clock_shift.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long shift_ns(void) {
    static long long shift = -1;
    if (shift == -1) {
        const char *s = getenv("MS_AUTH_TEST_CLOCK_SHIFT_MS");
        shift = s ? atoll(s) * 1000000LL : 0;
    }
    return shift;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + shift_ns();
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"#,
    )
    .unwrap();
    let library = dir.join("libclock_shift.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("a C compiler (cc)");
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    library
}
