//! What Redis holds of one key's quota in one period, as the agents read, check and change it (the
//! Redis side, reads and writes, is `lease_hash.rs`).
//!
//! The hash holds, per host, `lease:HOST` (how much of the quota the host may count, cumulative),
//! `used:HOST` (what it counted), `base:HOST` and `inc:HOST`, and for the whole hash `seq` (raised by
//! every write) and `sig`, the fleet secret's signature over all of it. Every value is a non-negative
//! integer; anything else, a field too many or too few, or a signature that does not match is refused:
//! write access to Redis alone cannot lend anyone a lease.
//!
//! `inc:HOST` is the incarnation of the host's counters file (see `SharedCounters::incarnation`) and
//! `base:HOST` the offset between the host's figures in Redis and in that file: Redis figure = local
//! figure + base. A file rebuilt from the database (a reboot, damage) has a new incarnation and counts
//! only up to the database's last flush, so when it first asks, everything the old incarnation held
//! counts as used (the base takes it in) and the host counts only what it is granted from then on.

use std::collections::{BTreeMap, HashMap};

use super::Secret;

/// One host's figures in a quota hash (Redis units).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) lease: i64,
    pub(super) used: i64,
    pub(super) base: i64,
    pub(super) inc: i64,
}

/// A quota hash's content: its sequence number and every host's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct State {
    pub(super) seq: i64,
    pub(super) hosts: BTreeMap<String, Entry>,
}

/// What a host asks of a quota: `used` and `held` as its counters file (incarnation `inc`) has them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ask {
    pub(super) inc: i64,
    pub(super) want: i64,
    pub(super) limit: i64,
    pub(super) used: i64,
    pub(super) held: i64,
    /// False while the fleet recovers from a lost or forged hash: leases are only re-asserted.
    pub(super) may_grow: bool,
}

/// What a grant gave: the host's lease in its own counters file's terms, whether the quota is spent,
/// what all hosts hold, and how much more this host was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Granted {
    pub(super) local_lease: i64,
    pub(super) spent: bool,
    pub(super) fleet_leased: i64,
    pub(super) more: i64,
}

const KINDS: [&str; 4] = ["lease", "used", "base", "inc"];

impl State {
    pub(super) fn fleet_leased(&self) -> i64 {
        self.hosts.values().fold(0i64, |sum, e| sum.saturating_add(e.lease))
    }

    /// The host's lease in its own file's terms, if Redis holds one for that incarnation.
    pub(super) fn local_lease(&self, host: &str, inc: i64) -> Option<i64> {
        self.hosts.get(host).filter(|e| e.inc == inc).map(|e| e.lease - e.base)
    }

    fn parts(&self, hash: &str) -> Vec<String> {
        let mut parts = vec!["quota-lease".to_string(), hash.to_string(), self.seq.to_string()];
        for (host, e) in &self.hosts {
            parts.push(host.clone());
            parts.extend([e.lease, e.used, e.base, e.inc].map(|v| v.to_string()));
        }
        parts
    }

    /// The signature, 60 bits of the HMAC as an integer (every field of the hash is an integer).
    fn signature(&self, secret: &Secret, fleet: &str, hash: &str) -> i64 {
        let parts = self.parts(hash);
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let hex = secret.sign_parts(fleet, &parts);
        i64::from_str_radix(&hex[..15], 16).expect("hex")
    }

    /// The hash's fields, signed.
    pub(super) fn to_fields(&self, secret: &Secret, fleet: &str, hash: &str) -> Vec<(String, i64)> {
        let mut fields = vec![("seq".to_string(), self.seq), ("sig".to_string(), self.signature(secret, fleet, hash))];
        for (host, e) in &self.hosts {
            for (kind, v) in KINDS.iter().zip([e.lease, e.used, e.base, e.inc]) {
                fields.push((format!("{kind}:{host}"), v));
            }
        }
        fields
    }

    /// The hash's content if it is whole and signed with the fleet's secret; else why not.
    pub(super) fn from_fields(
        fields: &HashMap<String, String>,
        secret: &Secret,
        fleet: &str,
        hash: &str,
    ) -> Result<State, String> {
        let number = |field: &str, text: &str| match text.parse::<i64>() {
            Ok(v) if v >= 0 => Ok(v),
            _ => Err(format!("{field} is {text:?}, not a non-negative integer")),
        };
        let mut state = State::default();
        let mut sig = None;
        let mut seen: BTreeMap<String, [Option<i64>; 4]> = BTreeMap::new();
        for (field, text) in fields {
            let v = number(field, text)?;
            match field.as_str() {
                "seq" => state.seq = v,
                "sig" => sig = Some(v),
                _ => {
                    let (kind, host) = field.split_once(':').ok_or_else(|| format!("unknown field {field:?}"))?;
                    let i = KINDS.iter().position(|k| *k == kind).ok_or_else(|| format!("unknown field {field:?}"))?;
                    seen.entry(host.to_string()).or_default()[i] = Some(v);
                }
            }
        }
        for (host, values) in seen {
            let [Some(lease), Some(used), Some(base), Some(inc)] = values else {
                return Err(format!("host {host:?} lacks some of its lease, used, base and inc fields"));
            };
            state.hosts.insert(host, Entry { lease, used, base, inc });
        }
        match sig {
            None => Err("no signature".into()),
            Some(sig) if sig != state.signature(secret, fleet, hash) => {
                Err("the signature does not match (not signed with the fleet's secret)".into())
            }
            Some(_) => Ok(state),
        }
    }

    /// Grants `host` more of the quota, as `ask` says: never less than the host holds or counted (a
    /// re-assertion after Redis lost it), at most half of what is left, nothing past the quota.
    pub(super) fn grant(&mut self, host: &str, limit_ask: &Ask) -> Granted {
        let a = limit_ask;
        let (base, floor, used) = match self.hosts.get(host) {
            Some(e) if e.inc == a.inc => {
                let used = e.used.max(a.used.saturating_add(e.base));
                (e.base, e.lease.max(a.held.saturating_add(e.base)).max(used), used)
            }
            // Another incarnation of the host's counters file (rebuilt from its database, which counts
            // only to its last flush): all the old one held counts as used.
            Some(e) => {
                let old = e.lease.max(e.used);
                let base = old.saturating_sub(a.used).max(0);
                let used = a.used.saturating_add(base);
                (base, old.max(a.held.saturating_add(base)).max(used), used)
            }
            None => (0, a.held.max(a.used), a.used),
        };
        let others = self.fleet_leased() - self.hosts.get(host).map_or(0, |e| e.lease);
        let total = others.saturating_add(floor);
        let left = a.limit.saturating_sub(total);
        let more = if a.may_grow && left > 0 && a.want > 0 { a.want.min((left / 2).max(1)) } else { 0 };
        let lease = floor + more;
        self.hosts.insert(host.to_string(), Entry { lease, used, base, inc: a.inc });
        Granted { local_lease: lease - base, spent: left - more <= 0, fleet_leased: total + more, more }
    }

    /// The host hands back what it held beyond `used`, its final count in the file of incarnation `inc`.
    /// False when Redis holds nothing of that incarnation (then what it held counts as used anyway).
    pub(super) fn hand_back(&mut self, host: &str, inc: i64, used: i64) -> bool {
        match self.hosts.get_mut(host) {
            Some(e) if e.inc == inc => {
                e.used = e.used.max(used.saturating_add(e.base));
                e.lease = e.used;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(inc: i64, want: i64, used: i64, held: i64) -> Ask {
        Ask { inc, want, limit: 400, used, held, may_grow: true }
    }

    fn fields(state: &State, secret: &Secret) -> HashMap<String, String> {
        state.to_fields(secret, "f", "h").into_iter().map(|(k, v)| (k, v.to_string())).collect()
    }

    #[test]
    fn a_signed_state_reads_back_and_any_change_to_it_is_refused() {
        let secret = Secret::new(b"a fleet secret of more than sixteen bytes");
        let mut state = State { seq: 7, ..State::default() };
        state.grant("a", &ask(11, 10, 0, 0));
        state.grant("b", &ask(12, 20, 3, 0));
        let good = fields(&state, &secret);
        assert_eq!(State::from_fields(&good, &secret, "f", "h"), Ok(state.clone()));
        assert!(State::from_fields(&good, &secret, "f", "other hash").is_err(), "a state signed for another hash");
        assert!(State::from_fields(&good, &secret, "g", "h").is_err(), "a state signed for another fleet");
        assert!(State::from_fields(&good, &Secret::new(b"another secret, long enough"), "f", "h").is_err());
        let tampered: [(&str, Option<&str>); 8] = [
            ("lease:ghost", Some("-1000000")),
            ("lease:ghost", Some("5")),
            ("lease:a", Some("1000")),
            ("lease:a", None),
            ("used:b", Some("1.5")),
            ("seq", Some("6")),
            ("sig", None),
            ("mode", Some("1")),
        ];
        for (field, value) in tampered {
            let mut bad = good.clone();
            match value {
                Some(v) => bad.insert(field.to_string(), v.to_string()),
                None => bad.remove(field),
            };
            assert!(State::from_fields(&bad, &secret, "f", "h").is_err(), "{field} = {value:?} was accepted");
        }
    }

    #[test]
    fn grants_never_exceed_the_quota_and_a_lease_is_never_below_what_its_host_holds() {
        let mut state = State::default();
        let a = state.grant("a", &ask(1, 1000, 0, 0));
        assert_eq!((a.local_lease, a.more, a.spent), (200, 200, false), "half of what is left");
        let b = state.grant("b", &ask(2, 1000, 0, 0));
        assert_eq!(b.local_lease, 100);
        // Host a re-asserts more than Redis has of it (Redis lost it): its lease is what it holds.
        let a = state.grant("a", &ask(1, 0, 150, 250));
        assert_eq!((a.local_lease, a.more, a.fleet_leased), (250, 0, 350));
        let c = state.grant("c", &ask(3, 1000, 0, 0));
        assert_eq!(c.local_lease, 25);
        for _ in 0..100 {
            state.grant("c", &ask(3, 1000, 0, 0));
        }
        assert_eq!(state.fleet_leased(), 400);
        assert!(state.grant("b", &ask(2, 1, 100, 100)).spent);
        // While the fleet recovers, nothing more.
        let mut fresh = State::default();
        let g = fresh.grant("a", &Ask { may_grow: false, ..ask(1, 100, 0, 30) });
        assert_eq!((g.local_lease, g.more), (30, 0));
    }

    #[test]
    fn a_rebuilt_counters_file_never_counts_its_old_lease_again() {
        let mut state = State::default();
        for _ in 0..4 {
            state.grant("a", &ask(1, 50, 0, 0));
        }
        let before = state.hosts["a"];
        assert_eq!((before.lease, before.base), (200, 0));
        // The host admitted up to 200, rebooted, and its database had flushed 30 of them.
        let g = state.grant("a", &ask(2, 50, 30, 0));
        let after = state.hosts["a"];
        assert_eq!(after.base, 170, "the old lease counts as used");
        assert_eq!(g.local_lease, 30 + g.more, "it may count only what it was newly granted");
        assert_eq!(g.more, 50);
        assert_eq!(after.lease, 250);
        assert_eq!(state.local_lease("a", 2), Some(80));
        assert_eq!(state.local_lease("a", 1), None);
        // Handing back in the new incarnation's terms.
        assert!(state.hand_back("a", 2, 40));
        assert_eq!((state.hosts["a"].lease, state.hosts["a"].used), (210, 210));
        assert!(!state.hand_back("a", 1, 0), "nothing of an older incarnation");
    }
}
