//! Looking at running processes from outside: plain HTTP GETs on loopback (admin and monitoring
//! endpoints), Prometheus counters, and a process's memory from `/proc`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

/// GET `path` from `address` (`host:port`, or an `http://` URL): the status and the body, or `None`
/// while nothing answers.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let address = address.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of a chunked HTTP/1.1 response.
pub fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = chunked.windows(2).position(|window| window == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&chunked[..end]).trim(), 16).unwrap_or(0);
        if size == 0 || chunked.len() < end + 2 + size {
            break;
        }
        body.extend_from_slice(&chunked[end + 2..end + 2 + size]);
        chunked = &chunked[(end + 4 + size).min(chunked.len())..];
    }
    body
}

/// The samples of the Prometheus metric named `name` in `text`: each one's line and value.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines()
        .filter(move |line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| Some((line, line.rsplit(' ').next()?.parse::<f64>().ok()?)))
}

/// Sums the samples of a Prometheus counter or gauge named `name` (any labels).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    samples(text, name).map(|(_, value)| value).sum()
}

/// Sums the samples of a counter named `name` whose labels include `label` (for example
/// `outcome="delivered"`).
pub fn metric_sum_with(text: &str, name: &str, label: &str) -> f64 {
    samples(text, name)
        .filter(|(line, _)| line[name.len()..].starts_with('{') && line.contains(label))
        .map(|(_, value)| value)
        .sum()
}

/// A process's resident memory now and at its peak, in KiB (`VmRSS`, `VmHWM`).
pub fn process_memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in clock ticks of USER_HZ, 100 on every mainstream configuration.
    Some(ticks as f64 / 100.0)
}

/// The machine's load averages and run queue, as `/proc/loadavg` has them: how busy the machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE reno_worker_events_total counter\n\
        reno_worker_events_total{outcome=\"delivered\",type=\"a\"} 3\n\
        reno_worker_events_total{outcome=\"delivered\",type=\"b\"} 4\n\
        reno_worker_events_total{outcome=\"stale\",type=\"a\"} 5\n\
        reno_worker_events_total_extra{outcome=\"delivered\"} 100\n\
        reno_presence_devices_online 7\n";

    #[test]
    fn sums_the_samples_of_one_metric_with_or_without_a_label() {
        assert_eq!(metric_sum(TEXT, "reno_worker_events_total"), 12.0);
        assert_eq!(metric_sum_with(TEXT, "reno_worker_events_total", "outcome=\"delivered\""), 7.0);
        assert_eq!(metric_sum(TEXT, "reno_presence_devices_online"), 7.0);
        assert_eq!(metric_sum_with(TEXT, "reno_presence_devices_online", "outcome=\"delivered\""), 0.0);
    }
}
