//! Contract doubles of kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy.
//!
//! Test-only: never a dependency of the product. One binary, five personalities picked by argv[0]'s file
//! name; the Kubernetes version it impersonates is stamped into the binary (see [`version`]). Each double
//! is as strict as the real component where an installer can go wrong: flags per version, config fields,
//! certificates, addresses; the apiserver stores into the real etcd and serves real `kubectl`.

pub mod apiserver;
pub mod components;
pub mod config;
pub mod controllers;
pub mod encryption;
pub mod etcd;
pub mod flags;
pub mod http;
pub mod informer;
pub mod kubeconfig;
pub mod kubelet;
pub mod log;
pub mod objects;
pub mod pki;
pub mod satoken;
pub mod scheduler;
pub mod version;

/// The five personalities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// kube-apiserver
    ApiServer,
    /// kube-controller-manager
    ControllerManager,
    /// kube-scheduler
    Scheduler,
    /// kubelet
    Kubelet,
    /// kube-proxy
    Proxy,
}

impl Component {
    /// All five.
    pub const ALL: [Component; 5] = [
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
        Component::Kubelet,
        Component::Proxy,
    ];

    /// The official binary name.
    pub fn binary_name(self) -> &'static str {
        match self {
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Kubelet => "kubelet",
            Component::Proxy => "kube-proxy",
        }
    }

    /// The personality for a binary file name.
    pub fn from_binary_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.binary_name() == name)
    }
}

/// Runs `component` with `args` (argv without argv[0]); returns the process exit code.
pub fn run(component: Component, args: &[String]) -> i32 {
    let stamped = version::stamped();
    let Some(version) =
        version::KubeVersion::parse(&stamped).filter(|v| v.major == 1 && (34..=37).contains(&v.minor))
    else {
        eprintln!(
            "Error: this contract double is stamped with version {stamped:?}; stamp it with `kubeforge-doubles stamp` (supported: v1.34.x to v1.37.x)"
        );
        return 1;
    };
    let table = flags::table(component, version.minor).expect("tables exist for 1.34 to 1.37");
    let parsed = match flags::parse(args, &table) {
        flags::ParseOutcome::Run(f) => f,
        flags::ParseOutcome::Help => {
            println!("{}", flags::usage(component, &table));
            return 0;
        }
        flags::ParseOutcome::Version(v) => {
            match v.as_str() {
                "raw" => println!(
                    "{{\"major\":\"{}\",\"minor\":\"{}\",\"gitVersion\":\"{version}\"}}",
                    version.major, version.minor
                ),
                _ => println!("Kubernetes {version}"),
            }
            return 0;
        }
        flags::ParseOutcome::Error(msg) => {
            eprintln!("{}", flags::usage(component, &table));
            eprintln!("Error: {msg}");
            return 1;
        }
    };
    if !parsed.positional.is_empty() {
        eprintln!(
            "Error: {:?} does not take any arguments, got {:?}",
            component.binary_name(),
            parsed.positional
        );
        return 1;
    }
    for (name, spec) in &table {
        if parsed.has(name) && spec.deprecated != "no" {
            let why = if spec.deprecated == "deprecated:use-config-file" {
                "This parameter should be set via the config file specified by the Kubelet's --config flag. See https://kubernetes.io/docs/tasks/administer-cluster/kubelet-config-file/ for more information."
            } else {
                "it will be removed in a future release"
            };
            eprintln!("Flag --{name} has been deprecated, {why}");
        }
    }
    log::info(
        "server.go:1",
        "Version",
        &[
            ("version", version.to_string()),
            ("double", "kubeforge contract double, not the official binary".into()),
        ],
    );
    http::init_crypto();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async move {
        match component {
            Component::ApiServer => apiserver::run(parsed, version).await,
            Component::ControllerManager => components::controller_manager(parsed, version).await,
            Component::Scheduler => components::scheduler(parsed, version).await,
            Component::Kubelet => kubelet::run(parsed, version).await,
            Component::Proxy => components::proxy(parsed, version).await,
        }
    });
    match result {
        Ok(()) => 0,
        Err(msg) => {
            log::error("run.go:72", "command failed", &[("err", msg.clone())]);
            eprintln!("Error: {msg}");
            1
        }
    }
}
