//! Benchmark (not a test): the SSH workload of `benches/ssh/` done by kubeforge's real engine
//! (`SshTransport` + `Executor` + `Upload`). Per host: 1 command (`mkdir -p`), the 50 MB payload, 10
//! templates rendered with Tera and uploaded, 4 more commands; all hosts in parallel, one connection each.
//!
//! It is one of the three contenders driven by `benches/ssh/run.sh`, which starts the sshd hosts, times
//! this binary against ansible-core and plain OpenSSH, and prints the table. Run that script; invoked
//! without `--hosts` (as `cargo bench` does) this binary only says so.
//!
//! usage: ssh_engine --hosts hosts.tsv --limit N --payload FILE --templates DIR --identity KEY
//!        --known-hosts FILE
//! `hosts.tsv`: one host a line, `name<TAB>address<TAB>port<TAB>root<TAB>index`; `#` lines are skipped.
//! Prints one JSON line: wall seconds of the whole workload and the summed transport counters.

use kubeforge::exec::{Executor, HostPlan, Step};
use kubeforge::report::Silent;
use kubeforge::transport::known_hosts::HostKeyPolicy;
use kubeforge::transport::ssh::{SshTarget, SshTransport, SudoMode};
use kubeforge::transport::{Command, Transport, Upload};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    hosts: PathBuf,
    limit: usize,
    payload: PathBuf,
    templates: PathBuf,
    identity: PathBuf,
    known_hosts: PathBuf,
}

fn parse_args() -> Option<Args> {
    let mut it = std::env::args().skip(1);
    let (mut hosts, mut limit, mut payload, mut templates, mut identity, mut known_hosts) =
        (None, None, None, None, None, None);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--hosts" => hosts = Some(PathBuf::from(val())),
            "--limit" => limit = Some(val().parse().expect("--limit N")),
            "--payload" => payload = Some(PathBuf::from(val())),
            "--templates" => templates = Some(PathBuf::from(val())),
            "--identity" => identity = Some(PathBuf::from(val())),
            "--known-hosts" => known_hosts = Some(PathBuf::from(val())),
            // `cargo bench` passes `--bench` (and maybe a filter) to every bench target.
            _ => {}
        }
    }
    Some(Args {
        hosts: hosts?,
        limit: limit.unwrap_or(usize::MAX),
        payload: payload.expect("--payload"),
        templates: templates.expect("--templates"),
        identity: identity.expect("--identity"),
        known_hosts: known_hosts.expect("--known-hosts"),
    })
}

struct Host {
    name: String,
    address: String,
    port: u16,
    root: String,
    index: String,
}

fn read_hosts(args: &Args) -> Vec<Host> {
    let text = std::fs::read_to_string(&args.hosts).expect("reading --hosts");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() >= 5, "hosts line needs 5 tab-separated fields: {l}");
            Host {
                name: f[0].into(),
                address: f[1].into(),
                port: f[2].parse().expect("port"),
                root: f[3].into(),
                index: f[4].into(),
            }
        })
        .take(args.limit)
        .collect()
}

/// The 10 templates (`fNN.conf.j2`), sorted by name, loaded into one Tera instance.
fn load_templates(dir: &std::path::Path) -> (tera::Tera, Vec<String>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("reading --templates")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".conf.j2"))
        .collect();
    names.sort();
    let mut tera = tera::Tera::default();
    for n in &names {
        let body = std::fs::read_to_string(dir.join(n)).expect("reading a template");
        tera.add_raw_template(n, &body).expect("template parses");
    }
    (tera, names)
}

fn plan(h: &Host, t: Arc<SshTransport>, payload: &Upload, tera: &tera::Tera, names: &[String]) -> HostPlan {
    let r = &h.root;
    let bin = format!("{r}/usr/local/bin/payload.bin");
    let mut steps = vec![Step::exec(
        "create directories",
        Command::new("mkdir").arg("-p").args([
            format!("{r}/usr/local/bin"),
            format!("{r}/etc/kube"),
            format!("{r}/var/lib/kube"),
        ]),
    )];
    let mut up = payload.clone();
    up.dest = bin.clone();
    steps.push(Step::upload("payload", up));
    let mut ctx = tera::Context::new();
    ctx.insert("node_name", &h.name);
    ctx.insert("node_ip", &h.address);
    ctx.insert("node_index", &h.index);
    ctx.insert("root", r);
    ctx.insert("cluster_name", "bench");
    for n in names {
        let text = tera.render(n, &ctx).expect("template renders");
        let dest = format!("{r}/etc/kube/{}", n.trim_end_matches(".j2"));
        steps.push(Step::upload(format!("render {n}"), Upload::bytes(text, dest, 0o644)));
    }
    steps.push(Step::exec("payload size", Command::new("stat").arg("-c").arg("%s").arg(&bin)));
    steps.push(Step::exec(
        "config bytes",
        Command::shell(r#"cat "$1"/etc/kube/*.conf | wc -c"#).arg(r.as_str()),
    ));
    steps.push(Step::exec("kernel", Command::new("uname").arg("-r")));
    steps.push(Step::exec("start", Command::new("touch").arg(format!("{r}/var/lib/kube/started"))));
    HostPlan { transport: t, steps }
}

#[tokio::main]
async fn main() {
    let Some(args) = parse_args() else {
        println!("ssh_engine: run benches/ssh/run.sh (it starts the sshd hosts and passes --hosts etc.)");
        return;
    };
    let hosts = read_hosts(&args);
    let started = Instant::now();
    // Hashing the payload once is part of the engine's work (skip-if-unchanged needs it).
    let payload = Upload::file(&args.payload, "", 0o755).expect("reading --payload");
    let (tera, names) = load_templates(&args.templates);
    let transports: Vec<Arc<SshTransport>> = hosts
        .iter()
        .map(|h| {
            Arc::new(SshTransport::new(SshTarget {
                name: h.name.clone(),
                address: h.address.clone(),
                port: h.port,
                user: "root".into(),
                identity_files: vec![args.identity.clone()],
                agent: false,
                host_key: HostKeyPolicy::KnownHosts { path: args.known_hosts.clone(), accept_new: false },
                sudo: SudoMode::Off,
                bastion: None,
                connect_timeout: Duration::from_secs(60),
                keepalive: Duration::from_secs(15),
            }))
        })
        .collect();
    let plans =
        hosts.iter().zip(&transports).map(|(h, t)| plan(h, t.clone(), &payload, &tera, &names)).collect();
    let ex = Executor::new(hosts.len(), Arc::new(Silent));
    let report = ex.run("bench", plans).await;
    for t in &transports {
        t.close().await;
    }
    let wall = started.elapsed().as_secs_f64();
    if !report.failures.is_empty() {
        eprintln!("{}", report.into_result().unwrap_err());
        std::process::exit(1);
    }
    let (mut rt, mut sent, mut conns) = (0, 0, 0);
    for t in &transports {
        let s = t.stats();
        rt += s.round_trips;
        sent += s.bytes_sent;
        conns += s.connects;
    }
    println!(
        "{{\"hosts\":{},\"wall_s\":{wall:.3},\"round_trips\":{rt},\"bytes_sent\":{sent},\"connects\":{conns}}}",
        hosts.len()
    );
}
