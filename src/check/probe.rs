//! The way to the broker, one layer at a time, as `check` reports it: the
//! name lookup (bounded by `--connect-timeout`, which the system resolver
//! is not), the TCP connection and its time, and the TLS handshake with the
//! run's own TLS configuration, which shows the broker's certificate and
//! its expiry. This connection carries no MQTT: the CONNECT is the
//! session's, on a connection of its own.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Report;
use crate::config::Config;
use crate::error::{Error, Exit};
use crate::sys::io_reason;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The broker's addresses, within `limit`.
fn lookup(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    // The system resolver has no timeout of ours: it runs in a thread that
    // is left behind (and ends with the process) if it takes too long.
    std::thread::spawn(move || {
        let _ = tx.send(
            (name.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>()),
        );
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(Error::new(
            Exit::Unavailable,
            format!("the name {host} has no address"),
        )),
        Ok(Err(e)) => Err(Error::new(
            Exit::Unavailable,
            format!(
                "cannot resolve {host}: {} (check --host and the machine's DNS)",
                io_reason(&e)
            ),
        )),
        Err(_) => Err(Error::new(
            Exit::Unavailable,
            format!(
                "no answer from DNS for {host} within {} s (check the machine's DNS)",
                limit.as_secs_f64()
            ),
        )),
    }
}

/// DNS, TCP and (when configured) TLS. Returns whether the broker can be
/// reached; each failure is a FAIL line (69, or 77 for a refused client
/// certificate).
pub fn reach(cfg: &Config, r: &mut Report) -> bool {
    let b = &cfg.broker;
    let limit = b.connect_timeout;
    let started = Instant::now();
    let addrs = if let Ok(ip) = b.host.parse::<IpAddr>() {
        r.ok(
            "dns",
            format!("{} is an address: no lookup", b.host),
            Value::Null,
        );
        vec![SocketAddr::new(ip, b.port)]
    } else {
        match lookup(&b.host, b.port, limit) {
            Ok(addrs) => {
                let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                r.ok(
                    "dns",
                    format!(
                        "{} is {} ({})",
                        b.host,
                        list.join(", "),
                        ms(started.elapsed())
                    ),
                    json!({ "addresses": list, "ms": started.elapsed().as_secs_f64() * 1000.0 }),
                );
                addrs
            }
            Err(e) => {
                r.fail("dns", e, Value::Null);
                r.skip("tcp", "no address");
                r.skip("tls", "no address");
                return false;
            }
        }
    };
    let mut stream = None;
    let mut last = None;
    for addr in &addrs {
        let t = Instant::now();
        match TcpStream::connect_timeout(addr, limit) {
            Ok(s) => {
                r.ok(
                    "tcp",
                    format!("connected to {addr} in {}", ms(t.elapsed())),
                    json!({ "address": addr.to_string(), "ms": t.elapsed().as_secs_f64() * 1000.0 }),
                );
                stream = Some(s);
                break;
            }
            Err(e) => last = Some((*addr, e)),
        }
    }
    let Some(mut stream) = stream else {
        let why = match last {
            Some((addr, e)) => match e.kind() {
                std::io::ErrorKind::ConnectionRefused => format!(
                    "nothing listens on {addr} (connection refused): is the broker running, is the port right?"
                ),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => format!(
                    "no answer from {addr} within {} s: the wrong host or port, or a firewall?",
                    limit.as_secs_f64()
                ),
                _ => format!("cannot connect to {addr}: {}", io_reason(&e)),
            },
            None => "no address to connect to".to_string(),
        };
        r.fail("tcp", Error::new(Exit::Unavailable, why), Value::Null);
        r.skip("tls", "no connection");
        return false;
    };
    tls(cfg, &mut stream, r)
}

#[cfg(feature = "tls")]
fn tls(cfg: &Config, stream: &mut TcpStream, r: &mut Report) -> bool {
    use super::{Status, cert, unix_now, validity};
    let b = &cfg.broker;
    let Some(tls) = &b.tls else {
        plain(cfg, r);
        return true;
    };
    let name = format!("{}:{}", b.host, b.port);
    let hs = match crate::tls::handshake(tls, &b.host, stream, &name, b.connect_timeout) {
        Ok(hs) => hs,
        Err(e) => {
            r.fail("tls", e, Value::Null);
            return false;
        }
    };
    let took = ms(hs.took);
    let checked = match (&tls.cafile, tls.insecure) {
        (Some(ca), false) => format!("trusted through {} and names {}", ca.display(), b.host),
        (None, false) => format!("trusted through the system's CAs and names {}", b.host),
        (Some(ca), true) => format!(
            "trusted through {} (--insecure: its names are not checked)",
            ca.display()
        ),
        (None, true) => {
            "trusted through the system's CAs (--insecure: its names are not checked)".to_string()
        }
    };
    match hs.chain.first().and_then(|d| cert::facts(d)) {
        Some(f) => {
            let now = unix_now();
            let (status, valid) = validity(&f, now);
            let text = format!(
                "{} handshake in {took}; the broker's certificate ({}, issued by {}) is {checked}; {valid}",
                hs.version, f.subject, f.issuer
            );
            let figures = json!({
                "version": hs.version,
                "subject": f.subject,
                "issuer": f.issuer,
                "not_after": cert::date(f.not_after),
                "days_left": (f.not_after - now + 86_399).div_euclid(86_400),
            });
            match status {
                Status::Ok => r.ok("tls", text, figures),
                _ => r.warn("tls", text, figures),
            }
        }
        None => r.warn(
            "tls",
            format!(
                "{} handshake in {took}; the broker's certificate is {checked}, but its dates cannot be read",
                hs.version
            ),
            json!({ "version": hs.version }),
        ),
    }
    true
}

#[cfg(not(feature = "tls"))]
fn tls(cfg: &Config, _stream: &mut TcpStream, r: &mut Report) -> bool {
    plain(cfg, r);
    true
}

/// No TLS: a password crossing the network readable is worth a warning.
fn plain(cfg: &Config, r: &mut Report) {
    let b = &cfg.broker;
    let local = b.host == "localhost" || b.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if b.password.is_some() && !local {
        r.warn(
            "tls",
            "not used: the password and the readings cross the network readable (--cafile or an mqtts:// URL turn TLS on)",
            Value::Null,
        );
    } else {
        r.skip("tls", "not used (plain TCP)");
    }
}
