//! The private key on disk: written 0600, and refused when others could read it (as ssh does).

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use tbox_protocol::PrivateKey;

/// Loads the key, refusing a file that group or others may read.
pub fn load(path: &Path) -> anyhow::Result<PrivateKey> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!("cannot read the private key {} (make one with: tbox-report keygen)", path.display())
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the private key {} may be read by others (mode {mode:03o}); fix it with: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    PrivateKey::from_pem(&pem).with_context(|| format!("{}", path.display()))
}

/// Writes a new private key with mode 0600; never overwrites.
pub fn write_new(path: &Path, key: &PrivateKey) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    anyhow::anyhow!(
                        "{} already exists; refusing to overwrite a key (use --out for another path)",
                        path.display()
                    )
                }
                _ => anyhow::anyhow!("cannot create {}: {e}", path.display()),
            }
        })?;
    std::io::Write::write_all(&mut file, key.to_pem()?.as_bytes())?;
    Ok(())
}
