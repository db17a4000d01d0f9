//! Compiles the arena's packets (proto/arena.proto) with iocore-proto:
//! pure Rust, no `protoc` needed.
fn main() -> std::io::Result<()> {
    iocore_proto::build::compile(&["proto/arena.proto"], &["proto"])
}
