//! Rebuild when embedded files change: migrations, templates and static files are compiled in.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=templates");
    println!("cargo:rerun-if-changed=../static");
}
