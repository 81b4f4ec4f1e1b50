//! Compiles the subset of etcd's KV API the comparison benchmark (`kvbench`) speaks.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/etcd_kv.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
