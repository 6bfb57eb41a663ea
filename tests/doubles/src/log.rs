//! klog-style log lines on stderr, the shape journald shows for the real components
//! (`I1122 11:05:00.123456   4242 server.go:1] "message" key="value"`).

use std::io::Write;

fn line(level: char, source: &str, msg: &str, kv: &[(&str, String)]) {
    let now = time::OffsetDateTime::now_utc();
    let mut out = format!(
        "{level}{:02}{:02} {:02}:{:02}:{:02}.{:06} {:>7} {source}] \"{msg}\"",
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond(),
        std::process::id()
    );
    for (k, v) in kv {
        out.push_str(&format!(" {k}={v:?}"));
    }
    out.push('\n');
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// Info line.
pub fn info(source: &str, msg: &str, kv: &[(&str, String)]) {
    line('I', source, msg, kv);
}

/// Warning line.
pub fn warn(source: &str, msg: &str, kv: &[(&str, String)]) {
    line('W', source, msg, kv);
}

/// Error line.
pub fn error(source: &str, msg: &str, kv: &[(&str, String)]) {
    line('E', source, msg, kv);
}
