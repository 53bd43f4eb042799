//! Generates Rust code for keel's `.proto` files.
//!
//! Messages always; gRPC client and server stubs only with the `grpc` feature, so that the pure
//! engine (which needs messages only) pulls in neither tonic nor tokio.
//!
//! madsim-tonic-build writes two copies: `$OUT_DIR/*.rs` for real tonic and `$OUT_DIR/sim/*.rs`
//! for `--cfg madsim`. Real tonic-build honours `generate_default_stubs` (every server method
//! defaults to `Unimplemented`, streaming methods return `BoxStream`); the simulated generator
//! ignores it. [`patch_sim_trait`] rewrites the simulated server traits into the same shape, so
//! one server implementation compiles against both runtimes.

use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "keelpb/raft.proto",
    "grpc/health/v1/health.proto",
];

/// The default body, identical to the one real tonic-build generates.
const UNIMPLEMENTED_BODY: &str = "{ Err(tonic::Status::unimplemented(\"Not yet implemented\")) }";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let json = std::env::var_os("CARGO_FEATURE_JSON").is_some();
    let descriptors = out_dir.join("descriptors.bin");
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut builder = tonic_build::configure();
    if json {
        builder = builder.file_descriptor_set_path(&descriptors);
    }
    builder
        .build_client(grpc)
        .build_server(grpc)
        .build_transport(grpc)
        .generate_default_stubs(grpc)
        // Every `bytes` field becomes `bytes::Bytes`: clones are reference-count bumps.
        .bytes(["."])
        // The v2 store's answer is the largest response; boxed, it does not grow every other.
        .boxed(".keelpb.V2Response.event")
        .compile_protos(&protos, &[root])?;

    if json {
        json_impls(&std::fs::read(&descriptors)?)?;
    }
    if grpc {
        for entry in std::fs::read_dir(out_dir.join("sim"))? {
            patch_sim_file(&entry?.path())?;
        }
    }
    Ok(())
}

/// serde impls for the etcd API's messages with the proto3 JSON mapping, as grpc-gateway's
/// `JSONPb{OrigName: true}` (etcd's gateway marshaler) writes it: proto field names, 64-bit
/// integers as strings, bytes as base64, enums by name, defaults left out. Unknown fields are
/// refused when parsing. One `<package>.serde.rs` per package, beside prost's output.
#[cfg(feature = "json")]
fn json_impls(descriptors: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    pbjson_build::Builder::new()
        .register_descriptors(descriptors)?
        .preserve_proto_field_names()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}

#[cfg(not(feature = "json"))]
fn json_impls(_descriptors: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}

fn patch_sim_file(path: &Path) -> std::io::Result<()> {
    let code = std::fs::read_to_string(path)?;
    let patched = patch_sim_traits(&code);
    if patched != code {
        std::fs::write(path, patched)?;
    }
    Ok(())
}

/// Rewrites every simulated server trait (`pub trait X: Send + Sync + 'static { ... }`).
fn patch_sim_traits(code: &str) -> String {
    const OPEN: &str = ": Send + Sync + 'static {";
    let mut out = String::with_capacity(code.len() + 4096);
    let mut rest = code;
    while let Some(open) = rest.find(OPEN) {
        let body_start = open + OPEN.len();
        // The simulated trait body holds only `type ..;` and `async fn ..;` items: no braces.
        let body_len = rest[body_start..]
            .find('}')
            .expect("server trait is closed");
        out.push_str(&rest[..body_start]);
        out.push_str(&patch_sim_trait(&rest[body_start..body_start + body_len]));
        rest = &rest[body_start + body_len..];
    }
    out.push_str(rest);
    out
}

/// Drops each `type FooStream: Stream<Item = Result<Resp, Status>> ..;` item, replaces
/// `Self::FooStream` by `BoxStream<Resp>`, and gives every method the Unimplemented default.
fn patch_sim_trait(body: &str) -> String {
    let items: Vec<&str> = body
        .split(';')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    let mut streams: Vec<(String, String)> = Vec::new();
    for item in items.iter().filter(|i| i.starts_with("type ")) {
        let name = item["type ".len()..]
            .split(':')
            .next()
            .expect("stream type name")
            .trim();
        let start = item.find("Result<").expect("stream item type") + "Result<".len();
        let end = item.rfind(", tonic::Status>").expect("stream item status");
        streams.push((format!("Self::{name}"), item[start..end].trim().to_string()));
    }
    let mut out = String::from("\n");
    for item in items.iter().filter(|i| !i.starts_with("type ")) {
        assert!(
            item.starts_with("async fn "),
            "unexpected trait item: {item}"
        );
        let mut method = item.to_string();
        for (assoc, response) in &streams {
            method = method.replace(assoc, &format!("BoxStream<{response}>"));
        }
        out.push_str(&format!("        {method} {UNIMPLEMENTED_BODY}\n"));
    }
    out.push_str("    ");
    out
}
