//! Benchmark (not a test): copying an etcd snapshot from a host to the admin machine, as `backup` and
//! `upgrade` do, through the real transport code (`LocalTransport`: `cat` in a child process, its stdout
//! read as SSH's channel data is). Two ways: the whole file read into memory (`read_file`, as before) and
//! streamed to disk (`download`, what the snapshot copy uses now). Each copy runs in a fresh process of its
//! own so the peak resident set it adds (`VmHWM` after minus before) is its own.
//!
//! `cargo bench --bench snapshot_copy` prints: size, way, seconds, MB/s, peak RSS growth (MiB).
//! Target: a 1 GiB snapshot streamed with a peak RSS growth under 64 MiB.

use kubeforge::transport::local::LocalTransport;
use kubeforge::transport::Transport;
use std::time::Instant;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// One copy in this process: prints `seconds peak_growth_kib`.
fn one(way: &str, src: &str, dest: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = LocalTransport::new("bench");
    let before = vm_hwm_kib();
    let start = Instant::now();
    match way {
        "memory" => {
            let bytes = rt.block_on(t.read_file(src, false, 8 << 30)).unwrap();
            std::fs::write(dest, &bytes).unwrap();
        }
        _ => {
            rt.block_on(t.download(src, false, std::path::Path::new(dest), None)).unwrap();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{secs} {}", vm_hwm_kib().saturating_sub(before));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "--one" {
        return one(&args[2], &args[3], &args[4]);
    }
    let dir = tempfile::tempdir().unwrap();
    println!("{:>8}  {:<9} {:>8} {:>8} {:>16}", "SIZE", "WAY", "SECONDS", "MB/s", "PEAK RSS +MiB");
    for mib in [64u64, 256, 1024] {
        let src = dir.path().join(format!("snap-{mib}.db"));
        {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
            let block: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
            for _ in 0..mib {
                f.write_all(&block).unwrap();
            }
        }
        // The in-memory way needs about twice the file in memory: skipped at 1 GiB on small machines.
        for way in ["memory", "streamed"] {
            let dest = dir.path().join(format!("copy-{mib}-{way}.db"));
            let out = std::process::Command::new(&args[0])
                .args(["--one", way, src.to_str().unwrap(), dest.to_str().unwrap()])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text.split_whitespace();
            let (Some(secs), Some(kib)) = (it.next(), it.next()) else {
                println!("{mib:>5} MiB  {way:<9} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
                continue;
            };
            let secs: f64 = secs.parse().unwrap();
            let kib: f64 = kib.parse().unwrap();
            println!(
                "{mib:>5} MiB  {way:<9} {secs:>8.2} {:>8.0} {:>16.1}",
                mib as f64 * 1.048576 / secs,
                kib / 1024.0
            );
            let _ = std::fs::remove_file(&dest);
        }
        let _ = std::fs::remove_file(&src);
    }
}
