//! `kubeforge-apilb`: the node-local API load balancer that kubeforge installs on every node of an HA
//! cluster (the `kube-api-lb` service). A small binary of its own (the standard library and rustls), so
//! nodes receive a few megabytes rather than the whole kubeforge binary.

fn main() {
    std::process::exit(kubeforge_apilb::main_with_args(std::env::args().skip(1)));
}
