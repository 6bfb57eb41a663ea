//! Entry point of the contract doubles: the personality comes from argv[0]'s file name
//! (`kube-apiserver`, `kubelet`, ...). Called as `kubeforge-doubles`, it offers the stamping tool:
//! `kubeforge-doubles stamp IN OUT VERSION` writes a copy of IN stamped with VERSION to OUT (mode 0755).

use kubeforge_doubles::{version, Component};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(String::as_str).unwrap_or("");
    let name = std::path::Path::new(argv0).file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(component) = Component::from_binary_name(name) {
        std::process::exit(kubeforge_doubles::run(component, &args[1..]));
    }
    match args.get(1).map(String::as_str) {
        Some("stamp") if args.len() == 5 => std::process::exit(stamp(&args[2], &args[3], &args[4])),
        Some("version") => println!("{}", version::stamped()),
        _ => {
            eprintln!("usage: kubeforge-doubles stamp IN OUT VERSION   (or run as kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy)");
            std::process::exit(2);
        }
    }
}

fn stamp(input: &str, output: &str, ver: &str) -> i32 {
    use std::os::unix::fs::PermissionsExt;
    let result = std::fs::read(input).map_err(|e| format!("read {input}: {e}")).and_then(|mut bytes| {
        version::stamp(&mut bytes, ver)?;
        let tmp = format!("{output}.tmp");
        std::fs::write(&tmp, &bytes).map_err(|e| format!("write {tmp}: {e}"))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, output).map_err(|e| format!("rename to {output}: {e}"))
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
