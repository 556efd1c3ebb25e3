//! Embeds the kernel object that `cargo xtask build` produced (path in WEFT_EBPF_OBJECT).
//! A plain `cargo build`/`clippy` without it embeds nothing, and `weft agent` then says to
//! build with xtask instead of loading an empty object.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=WEFT_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out.join("weft-ebpf.o");
    match env::var_os("WEFT_EBPF_OBJECT") {
        Some(object) => {
            let object = PathBuf::from(object);
            println!("cargo::rerun-if-changed={}", object.display());
            fs::copy(&object, &dest)
                .unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
        }
        None => fs::write(&dest, []).expect("writing empty placeholder object"),
    }
}
