//! Reaching Redis: one server (`redis://`, `rediss://` with a CA file) or the master Sentinel names
//! (`redis-sentinel://`), and the URL as logs may show it (without its password).

use std::time::Duration;

use super::link::Config;

pub(super) fn connect(cfg: &Config) -> std::result::Result<redis::Connection, String> {
    let client = if let Some(sentinel) = cfg.redis_url.strip_prefix("redis-sentinel://") {
        if cfg.ca_file.is_some() {
            return Err("TLS through Sentinel is not supported yet (use rediss:// to one server)".into());
        }
        let (sentinels, master, node) = sentinel_parts(sentinel, cfg.redis_password.as_deref())?;
        let mut client = redis::sentinel::SentinelClient::build(
            sentinels,
            master,
            Some(node),
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| e.to_string())?;
        // Sentinel names the current master; after a failover the next connection goes to the new one.
        client.get_client().map_err(|e| format!("Sentinel: {e}"))?
    } else {
        let mut info =
            redis::IntoConnectionInfo::into_connection_info(cfg.redis_url.as_str()).map_err(|e| e.to_string())?;
        if let Some(password) = &cfg.redis_password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        match &cfg.ca_file {
            Some(ca) => {
                let root_cert = std::fs::read(ca).map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                redis::Client::build_with_tls(info, certs).map_err(|e| e.to_string())?
            }
            None => redis::Client::open(info).map_err(|e| e.to_string())?,
        }
    };
    let conn = client.get_connection_with_timeout(Duration::from_secs(2)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    Ok(conn)
}

/// `[[user]:password@]host[:port][,host[:port]]...[/db]#master` (after `redis-sentinel://`, the form
/// Lettuce uses): the Sentinel nodes (port 26379 by default), the master's name, and the credentials and
/// database for the master (`password`, given apart from the URL, is the master's).
fn sentinel_parts(
    text: &str,
    password: Option<&str>,
) -> std::result::Result<(Vec<String>, String, redis::sentinel::SentinelNodeConnectionInfo), String> {
    let bad = |why: &str| {
        format!(
            "redis-sentinel:// URL: {why} (redis-sentinel://[[user]:password@]host[:port][,host[:port]][/db]#master)"
        )
    };
    let (rest, master) = text.split_once('#').ok_or_else(|| bad("no #master"))?;
    if master.is_empty() {
        return Err(bad("an empty master name"));
    }
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, db) = match rest.split_once('/') {
        Some((hosts, "")) => (hosts, 0),
        Some((hosts, db)) => (hosts, db.parse::<i64>().map_err(|_| bad("the database is not a number"))?),
        None => (rest, 0),
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| if h.contains(':') { format!("redis://{h}") } else { format!("redis://{h}:26379") })
        .collect();
    if sentinels.is_empty() {
        return Err(bad("no Sentinel host"));
    }
    let mut info = redis::RedisConnectionInfo::default().set_db(db);
    if let Some(userinfo) = userinfo {
        let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
        if !user.is_empty() {
            info = info.set_username(user);
        }
        if !password.is_empty() {
            info = info.set_password(password);
        }
    }
    if let Some(password) = password {
        info = info.set_password(password);
    }
    let node = redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    Ok((sentinels, master.to_string(), node))
}

/// True when the URL holds a password (`scheme://[user]:password@…`).
pub fn url_has_password(url: &str) -> bool {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            url[scheme + 3..at].split_once(':').is_some_and(|(_, p)| !p.is_empty())
        }
        _ => false,
    }
}

/// The URL without its password.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_its_nodes_its_master_and_nothing_else() {
        let (nodes, master, _) = sentinel_parts(":pw@10.0.0.1,10.0.0.2:26380/2#prod", None).unwrap();
        assert_eq!(nodes, ["redis://10.0.0.1:26379", "redis://10.0.0.2:26380"]);
        assert_eq!(master, "prod");
        for bad in ["10.0.0.1", "10.0.0.1#", "#prod", "10.0.0.1/x#prod"] {
            assert!(sentinel_parts(bad, None).is_err(), "{bad}");
        }
        assert_eq!(redacted("redis-sentinel://user:pw@h1,h2#m"), "redis-sentinel://user:***@h1,h2#m");
        assert!(url_has_password("rediss://:pw@h:6380") && url_has_password("redis-sentinel://u:pw@h1#m"));
        assert!(
            !url_has_password("redis://h:6379")
                && !url_has_password("redis://user@h")
                && !url_has_password("redis://:@h")
        );
    }
}
