//! `tbox-report keygen`: a new key pair; the private key is written 0600 and never overwritten.

use tbox_protocol::PrivateKey;

use crate::cli::KeygenArgs;
use crate::{config, exit, keyfile};

pub fn run(args: &KeygenArgs) -> anyhow::Result<u8> {
    let path = args.out.clone().unwrap_or_else(|| config::config_dir().join("builder.pem"));
    if path.exists() {
        anyhow::bail!("{} already exists; refusing to overwrite a key (use --out for another path)", path.display());
    }
    let key = PrivateKey::generate(&mut rand_core::OsRng, args.bits)?;
    keyfile::write_new(&path, &key)?;
    let public = key.public_key();
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, public.to_pem())?;
    crate::say!("private key: {} (mode 600; keep it on this machine)", path.display());
    crate::say!("public key:  {}", pub_path.display());
    crate::say!("fingerprint: {}", public.fingerprint());
    crate::say!();
    crate::say!("{}", public.to_pem().trim_end());
    Ok(exit::OK)
}
