//! Links kneenode against the libtorch that torch-sys found, so the binary runs without
//! LD_LIBRARY_PATH, and keeps libtorch_cuda linked so CUDA is visible on a GPU host.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // diesel's embed_migrations! reads these at compile time; cargo must know to rebuild.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // torch-sys (links = "tch") publishes its lib folder to its direct dependents only.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; the binary will need LD_LIBRARY_PATH"
        );
        return;
    };
    // Resolve the repository's `.libtorch` link to the shared cache, so the rpath stays valid for
    // a binary copied out of this checkout.
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| PathBuf::from(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=KNEENODE_LIBTORCH_LIB={}", lib.display());
    if let Some(version) = torch_version(&lib) {
        println!("cargo:rustc-env=KNEENODE_LIBTORCH_BUILT_VERSION={version}");
    }
    // rustc links with --as-needed; nothing in our code references libtorch_cuda's symbols
    // directly, so without this it is dropped and CUDA reads as unavailable even on a GPU host.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// The version PyTorch wrote into `torch/version.py`, next to its `lib/` folder.
fn torch_version(lib: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(lib.parent()?.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(['\'', '"']).to_owned())
}
