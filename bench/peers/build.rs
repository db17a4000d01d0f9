//! The arena's messages for the tokio arena peer, from iocore-cli's
//! proto/arena.proto, as a tokio user would generate them: prost-build
//! (with protox instead of protoc).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../../iocore-cli/proto/arena.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../../iocore-cli/proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
