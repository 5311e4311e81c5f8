//! The multi-process harness: several processes checking one store at once, against the same load on a
//! SQLite-transaction-per-check implementation, measured in the same run.
//! Run: cargo bench --bench multiprocess            (MS_AUTH_BENCH_SECONDS=3 by default)
//!
//! Reports latency percentiles with 4 processes on one hot key, checks per second with 1, 2 and 4
//! processes, and check time, open time and private memory with 1,000 vs 1,000,000 keys.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fixture, fixture_key, SqlitePerCheck, NOW};
use ms_auth::{Status, Store};

fn seconds() -> f64 {
    std::env::var("MS_AUTH_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0)
}

fn main() {
    if let Ok(role) = std::env::var("MS_AUTH_BENCH_ROLE") {
        return worker(&role);
    }
    let dir = tempfile::tempdir().unwrap();
    let small = fixture(&dir.path().join("small").tap_mkdir(), 1_000);
    Store::open(&small).unwrap().close().unwrap();

    println!("# 4 processes, one hot key, {}s each", seconds());
    println!("| implementation | checks/s | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    let ours = run("ms-auth", &small, 4, "hot");
    let base = run("sqlite", &small, 4, "hot");
    for (name, r) in [("ms-auth", &ours), ("SQLite transaction per check", &base)] {
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} |",
            r.rate,
            ns(r.pct(50.0)),
            ns(r.pct(99.0)),
            ns(r.pct(99.9)),
            ns(r.max())
        );
    }
    println!(
        "ratios: throughput {:.0}x, p99.9 {:.0}x lower, max {:.0}x lower\n",
        ours.rate / base.rate,
        base.pct(99.9) as f64 / ours.pct(99.9) as f64,
        base.max() as f64 / ours.max() as f64
    );
    // What a check above 100 µs was: a flush turn (about one a second across the store, the database
    // written by whichever process claims it) or a check that lost its core to another process (4
    // processes on a 2-core machine); with one process per core the second nearly disappears.
    for (procs, r) in [(4, &ours), (2, &run("ms-auth", &small, 2, "hot"))] {
        println!(
            "ms-auth, {procs} processes: p99.9/p50 {:.2}, checks above 100 µs: {} of {} ({} flush turns at 1 s, {} involuntary context switches)",
            r.pct(99.9) as f64 / r.pct(50.0) as f64,
            r.above(100_000),
            r.latencies.len(),
            seconds().ceil() as u64,
            r.preempted,
        );
    }
    println!();

    println!("# checks per second by number of processes (one hot key)");
    println!("| processes | ms-auth checks/s | SQLite per check checks/s |");
    println!("|---|---|---|");
    for procs in [1, 2, 4] {
        let a = run("ms-auth", &small, procs, "hot");
        let b = run("sqlite", &small, procs, "hot");
        println!("| {procs} | {:.0} | {:.0} |", a.rate, b.rate);
    }

    println!("\n# 1,000 vs 1,000,000 keys (one process, uniformly random keys)");
    let started = Instant::now();
    let large = fixture(&dir.path().join("large").tap_mkdir(), 1_000_000);
    let fixture_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    Store::open(&large).unwrap().close().unwrap();
    let build_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let reopened = Store::open(&large).unwrap();
    let open_s = started.elapsed().as_secs_f64();
    drop(reopened);
    println!(
        "fixture written in {fixture_s:.1}s; first open (builds the counters file) {build_s:.2}s; open {open_s:.3}s"
    );
    println!("| keys | checks/s | p50 | p99 | max (a flush turn) | private memory (RssAnon) |");
    println!("|---|---|---|---|---|---|");
    let k1 = run("ms-auth", &small, 1, "random:1000");
    let hot = run("ms-auth", &large, 1, "random:1000");
    let m1 = run("ms-auth", &large, 1, "random:1000000");
    for (keys, r) in [
        ("1,000 (all in use)", &k1),
        ("1,000,000 (1,000 of them in use)", &hot),
        ("1,000,000 (all in use, uniformly)", &m1),
    ] {
        println!(
            "| {keys} | {:.0} | {} | {} | {} | {} |",
            r.rate,
            ns(r.pct(50.0)),
            ns(r.pct(99.0)),
            ns(r.max()),
            r.rss_anon
        );
    }
    println!(
        "ratios to 1,000 keys: {:.2}x with 1,000 keys in use among 1,000,000; {:.2}x with all 1,000,000 in use",
        k1.rate / hot.rate,
        k1.rate / m1.rate
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

fn ns(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.1} ms", v as f64 / 1e6)
    } else if v >= 1_000 {
        format!("{:.1} µs", v as f64 / 1e3)
    } else {
        format!("{v} ns")
    }
}

struct Run {
    latencies: Vec<u64>,
    rate: f64,
    rss_anon: String,
    /// Involuntary context switches of the workers over the measured loop: with more processes than
    /// cores, each one is a check that waited for a time slice.
    preempted: u64,
}

impl Run {
    fn pct(&self, p: f64) -> u64 {
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i]
    }
    fn max(&self) -> u64 {
        *self.latencies.last().unwrap()
    }
    fn above(&self, ns: u64) -> usize {
        self.latencies.len() - self.latencies.partition_point(|&l| l <= ns)
    }
}

/// Runs `procs` worker processes at once; merges their latencies.
fn run(implementation: &str, db: &Path, procs: usize, keys: &str) -> Run {
    let out_dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..procs)
        .map(|i| {
            let out = out_dir.path().join(format!("w{i}"));
            let child = Command::new(std::env::current_exe().unwrap())
                .env("MS_AUTH_BENCH_ROLE", implementation)
                .env("MS_AUTH_BENCH_DB", db)
                .env("MS_AUTH_BENCH_KEYS", keys)
                .env("MS_AUTH_BENCH_OUT", &out)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    let mut latencies = Vec::new();
    let mut rate = 0.0;
    let mut rss_anon = String::new();
    let mut preempted = 0;
    for (child, out) in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        let mut lines = text.lines();
        rate += lines.next().unwrap().parse::<f64>().unwrap();
        rss_anon = lines.next().unwrap_or("").to_string();
        preempted += lines.next().and_then(|l| l.parse::<u64>().ok()).unwrap_or(0);
        let bytes = std::fs::read(&out).unwrap();
        latencies.extend(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())));
    }
    latencies.sort_unstable();
    Run { latencies, rate, rss_anon, preempted }
}

fn worker(implementation: &str) {
    let db = PathBuf::from(std::env::var("MS_AUTH_BENCH_DB").unwrap());
    let keys: Vec<String> = match std::env::var("MS_AUTH_BENCH_KEYS").unwrap().split_once(':') {
        Some(("random", n)) => {
            let n: usize = n.parse().unwrap();
            let mut x = std::process::id() as u64 | 1;
            (0..100_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    fixture_key((x % n as u64) as usize)
                })
                .collect()
        }
        _ => vec![fixture_key(0)],
    };
    type Checker = Box<dyn FnMut(&[u8], i64) -> Status>;
    let mut check: Checker = match implementation {
        "ms-auth" => {
            let store = Store::open(&db).unwrap();
            Box::new(move |k, now| store.check(Some(k), now).unwrap().decision.status)
        }
        _ => {
            let mut base = SqlitePerCheck::open(&db);
            Box::new(move |k, now| base.check(k, now))
        }
    };
    // Touch every key once first, and read private memory before the latency buffer exists.
    for key in &keys {
        assert_eq!(check(key.as_bytes(), NOW), Status::Ok);
    }
    let rss_anon = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("RssAnon"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds());
    let mut latencies = Vec::with_capacity(8_000_000);
    let started = Instant::now();
    let preempted_before = involuntary_switches();
    let mut i = 0;
    while Instant::now() < deadline {
        let key = keys[i % keys.len()].as_bytes();
        let t = Instant::now();
        // The clock advances as a server's does (the quota period and the flush turns follow it).
        let status = check(key, NOW + t.duration_since(started).as_millis() as i64);
        latencies.push(t.elapsed().as_nanos() as u64);
        assert_eq!(status, Status::Ok);
        i += 1;
    }
    let preempted = involuntary_switches() - preempted_before;
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    let mut out = std::fs::File::create(std::env::var("MS_AUTH_BENCH_OUT").unwrap()).unwrap();
    let bytes: Vec<u8> = latencies.iter().flat_map(|l| l.to_le_bytes()).collect();
    out.write_all(&bytes).unwrap();
    println!("{rate}\n{rss_anon}\n{preempted}");
}

fn involuntary_switches() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_nivcsw as u64
}
