//! The table the bench prints.

use std::time::Duration;

use super::memory::Memory;
use super::{FleetFigures, Settings};

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub fn report(s: &Settings, runs: &[FleetFigures], memory: Option<&Memory>) {
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nfleet_scale: one redis-server, {} checks/s over {} key(s) with a quota, {} s windows, {} trials; \
         {} cores, load average at the end {}",
        s.rate,
        s.load_keys,
        s.seconds,
        s.trials,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let header: Vec<String> = runs.iter().map(|r| format!("{} hosts", r.hosts)).collect();
    println!("{:<58} {}", "", header.iter().map(|h| format!("{h:>30}")).collect::<String>());
    let row = |label: &str, cells: Vec<String>| {
        println!("{label:<58} {}", cells.iter().map(|c| format!("{c:>30}")).collect::<String>());
    };
    for (i, what) in ["key create", "revocation"].iter().enumerate() {
        row(
            &format!("{what}: per host, p50 / p99"),
            runs.iter()
                .map(|r| {
                    let d = &r.propagation.per_host[i];
                    format!("{} / {} (n={})", ms(quantile(d, 0.5)), ms(quantile(d, 0.99)), d.len())
                })
                .collect(),
        );
        row(
            &format!("{what}: until every host, p50 / p99 / max"),
            runs.iter()
                .map(|r| {
                    let d = &r.propagation.every_host[i];
                    format!("{} / {} / {}", ms(quantile(d, 0.5)), ms(quantile(d, 0.99)), ms(*d.last().unwrap()))
                })
                .collect(),
        );
        for (part, fan_out) in
            [("  of which: until in the log (origin's agent)", false), ("  of which: from the log to every host", true)]
        {
            let list = |r: &FleetFigures| {
                let p = &r.propagation;
                if fan_out {
                    p.fan_out[i].clone()
                } else {
                    p.published[i].clone()
                }
            };
            row(
                &format!("{part}, p50 / p99"),
                runs.iter()
                    .map(|r| format!("{} / {}", ms(quantile(&list(r), 0.5)), ms(quantile(&list(r), 0.99))))
                    .collect(),
            );
        }
    }
    row("Redis commands/s, all hosts idle", runs.iter().map(|r| format!("{:.0}", r.idle.commands)).collect());
    row(
        "Redis commands/s per idle host",
        runs.iter().map(|r| format!("{:.1}", r.idle.commands / r.hosts as f64)).collect(),
    );
    row(
        "Redis network in / out per idle host, KB/s",
        runs.iter()
            .map(|r| format!("{:.2} / {:.2}", r.idle.net.0 / 1e3 / r.hosts as f64, r.idle.net.1 / 1e3 / r.hosts as f64))
            .collect(),
    );
    row(
        "Redis CPU, idle / under load (% of a core)",
        runs.iter()
            .map(|r| format!("{:.1}% / {:.1}%", 100.0 * r.idle.redis_cpu, 100.0 * r.load.window.redis_cpu))
            .collect(),
    );
    row(
        "agent CPU per host, idle / under load (% of a core)",
        runs.iter()
            .map(|r| format!("{:.1}% / {:.1}%", 100.0 * r.idle.agent_cpu, 100.0 * r.load.window.agent_cpu))
            .collect(),
    );
    row(
        "checks/s during the load window (admitted / refused)",
        runs.iter()
            .map(|r| format!("{:.0} ({}/{})", r.load.checks_per_second, r.load.admitted, r.load.refused))
            .collect(),
    );
    row("Redis commands/s under load", runs.iter().map(|r| format!("{:.0}", r.load.window.commands)).collect());
    row(
        "Redis commands/s per 1,000 checks/s (load - idle)",
        runs.iter()
            .map(|r| format!("{:.1}", (r.load.window.commands - r.idle.commands) / (r.load.checks_per_second / 1000.0)))
            .collect(),
    );
    row(
        "lease grants (script calls) per 1,000 checks",
        runs.iter().map(|r| format!("{:.1}", 1000.0 * r.load.window.grants / r.load.checks_per_second)).collect(),
    );
    row(
        "lease grants/s per (host, key) in use",
        runs.iter().map(|r| format!("{:.2}", r.load.window.grants / (r.hosts * s.load_keys) as f64)).collect(),
    );
    row(
        "a lease hash of a key used on every host: bytes (fields)",
        runs.iter().map(|r| format!("{:.0} ({:.0})", r.load.lease_hash.0, r.load.lease_hash.1)).collect(),
    );
    row(
        "load warm-up (every host topped up once)",
        runs.iter().map(|r| format!("{:.1} s", r.load.warmup.as_secs_f64())).collect(),
    );
    for r in runs {
        let top: Vec<String> = r
            .idle
            .by_command
            .iter()
            .take(8)
            .map(|(name, rate)| format!("{name} {:.2}", rate / r.hosts as f64))
            .collect();
        println!("  idle, per host and second ({} hosts): {}", r.hosts, top.join(", "));
        let top: Vec<String> =
            r.load.window.by_command.iter().take(8).map(|(name, rate)| format!("{name} {rate:.0}")).collect();
        println!("  under load, per second ({} hosts, {:.0} s): {}", r.hosts, r.load.window.seconds, top.join(", "));
    }
    if let Some(m) = memory {
        println!(
            "\nmemory: {} keys with a quota created on one host (Store::create_key, {:.1} s; all published by {:.1} s)",
            m.keys, m.create_seconds, m.publish_seconds
        );
        let per_100k = |bytes: f64, what: &str| format!("{:.1} MB per 100,000 {what}", bytes * 100_000.0 / 1e6);
        println!(
            "  used_memory after - before:          {:>6.0} B per key  ({})",
            m.used_per_key,
            per_100k(m.used_per_key, "keys")
        );
        println!(
            "  state hash (MEMORY USAGE):           {:>6.0} B per key  ({})",
            m.state_per_key,
            per_100k(m.state_per_key, "keys")
        );
        println!(
            "  change log (MEMORY USAGE):           {:>6.0} B per entry ({} entries: a key and its audit event each, trimmed at ~100,000; {})",
            m.log_per_entry,
            m.log_entries,
            per_100k(m.log_per_entry, "entries")
        );
        println!(
            "  {} keys leased by that host: used_memory {:.0} B per key leased; a lease hash (1 host) {:.0} B",
            m.leased, m.used_per_lease, m.lease_hash
        );
        println!(
            "  usage rows (a key's day on one host; the check above made one per key): {:.0} B in the host's history hash, {:.0} B in the usage stream",
            m.usage_hash_per_row, m.usage_stream_per_row
        );
        let synthetic: Vec<String> = m
            .synthetic_lease_hashes
            .iter()
            .map(|(p, bytes, encoding)| format!("{p} hosts {bytes} B ({encoding})"))
            .collect();
        println!("  a lease hash written directly with each host's two fields: {}", synthetic.join(", "));
        let grants: Vec<String> = m.grant_usec.iter().map(|(p, usec)| format!("{p} hosts {usec:.1} µs")).collect();
        println!(
            "  Redis's time per lease grant (the grant script), by hosts in the key's lease hash: {}",
            grants.join(", ")
        );
        println!(
            "  reading the whole state hash (HGETALL): {:.0} ms in Redis, a reply of {:.1} MB",
            m.state_read.0 as f64 / 1000.0,
            m.state_read.1 as f64 / 1e6
        );
        println!("  a host joining later caught up from the state hash in {:.1} s", m.catch_up_seconds);
    }
}
