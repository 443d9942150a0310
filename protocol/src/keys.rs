//! RSA keys, signatures and fingerprints, interoperable with the `openssl` command line.
//!
//! A signature is RSASSA-PKCS1-v1_5 with SHA-256 over the exact body bytes, base64
//! encoded: what `openssl dgst -sha256 -sign key.pem body | base64 -w0` prints.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::rand_core::CryptoRngCore;
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Smallest key accepted, per DESIGN.md.
pub const MIN_BITS: usize = 2048;
/// Largest key accepted: bigger keys only make verification slow for everybody.
pub const MAX_BITS: usize = 8192;

/// Why a key could not be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not a PEM RSA key of a kind we read.
    #[error(
        "not an RSA key in PEM form (expected BEGIN PUBLIC KEY, BEGIN RSA PUBLIC KEY, BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
    )]
    NotPem,
    /// The key is too small (or absurdly large).
    #[error("the key has {0} bits; RSA keys of {MIN_BITS} to {MAX_BITS} bits are accepted")]
    BadSize(usize),
    /// Generating or encoding a key failed.
    #[error("key operation failed: {0}")]
    Crypto(String),
}

/// Why a signature does not verify. Deliberately vague: a client learns nothing about keys.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The header is not base64.
    #[error("the signature is not valid base64")]
    NotBase64,
    /// The signature does not match the body under this key.
    #[error("the signature does not match the body")]
    Mismatch,
}

/// A builder's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(RsaPublicKey);

impl PublicKey {
    /// Reads a PEM public key, SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`), and checks its size.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::NotPem)?;
        check_size(key.n().bits())?;
        Ok(PublicKey(key))
    }

    /// The key as `BEGIN PUBLIC KEY` PEM, the form the server stores.
    pub fn to_pem(&self) -> String {
        // Encoding a key we already hold in memory cannot fail.
        self.0.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// `SHA256:` + hex SHA-256 of the DER SubjectPublicKeyInfo.
    ///
    /// The same value as `openssl pkey -pubin -outform DER | sha256sum`.
    pub fn fingerprint(&self) -> String {
        let der = self.0.to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
        format!("SHA256:{}", hex(&Sha256::digest(der)))
    }

    /// The key's size in bits.
    pub fn bits(&self) -> usize {
        self.0.n().bits()
    }

    /// Checks a base64 signature over `body`.
    pub fn verify(&self, body: &[u8], signature_b64: &str) -> Result<(), SignatureError> {
        let raw = BASE64.decode(signature_b64.trim()).map_err(|_| SignatureError::NotBase64)?;
        let sig = Signature::try_from(raw.as_slice()).map_err(|_| SignatureError::Mismatch)?;
        VerifyingKey::<Sha256>::new(self.0.clone()).verify(body, &sig).map_err(|_| SignatureError::Mismatch)
    }
}

/// A volunteer's private key. Lives on the volunteer's machine only.
#[derive(Clone)]
pub struct PrivateKey(RsaPrivateKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even in a debug log.
        write!(f, "PrivateKey({} bits)", self.0.n().bits())
    }
}

impl PrivateKey {
    /// Makes a new key of `bits` bits (at least 2048).
    pub fn generate(rng: &mut impl CryptoRngCore, bits: usize) -> Result<Self, KeyError> {
        check_size(bits)?;
        RsaPrivateKey::new(rng, bits).map(PrivateKey).map_err(|e| KeyError::Crypto(e.to_string()))
    }

    /// Reads a PEM private key, PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::NotPem)?;
        check_size(key.n().bits())?;
        Ok(PrivateKey(key))
    }

    /// The key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), as `openssl genpkey` writes it.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0.to_pkcs8_pem(LineEnding::LF).map(|pem| pem.to_string()).map_err(|e| KeyError::Crypto(e.to_string()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.to_public_key())
    }

    /// Signs `body`, returning the base64 value for the `Tbox-Signature` header.
    pub fn sign(&self, body: &[u8]) -> String {
        let sig = SigningKey::<Sha256>::new(self.0.clone()).sign(body);
        BASE64.encode(sig.to_bytes())
    }
}

/// A report's id: the hex SHA-256 of its exact body bytes.
pub fn report_id(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// Lowercase hex of bytes: how digests are written everywhere in tbox.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn check_size(bits: usize) -> Result<(), KeyError> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) { Ok(()) } else { Err(KeyError::BadSize(bits)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn openssl_available() -> bool {
        let ok = Command::new("openssl").arg("version").output().map(|o| o.status.success()).unwrap_or(false);
        if !ok {
            eprintln!("SKIPPED: the `openssl` command is not installed, so OpenSSL interoperability is not checked");
        }
        ok
    }

    fn openssl(args: &[&str]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let out = Command::new("openssl").args(args).output()?;
        if !out.status.success() {
            return Err(format!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(out.stdout)
    }

    fn tempdir(tag: &str) -> Result<PathBuf, std::io::Error> {
        let dir = std::env::temp_dir().join(format!("tbox-protocol-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn p(path: &Path) -> &str {
        path.to_str().unwrap_or_default()
    }

    #[test]
    fn openssl_signature_is_accepted() -> TestResult {
        if !openssl_available() {
            return Ok(());
        }
        let dir = tempdir("ossl-sign")?;
        for (bits, pkcs1) in [("2048", false), ("3072", true)] {
            let key = dir.join(format!("k{bits}.pem"));
            openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                &format!("rsa_keygen_bits:{bits}"),
                "-out",
                p(&key),
            ])?;
            let pubkey = dir.join(format!("k{bits}.pub"));
            let mut args = vec!["pkey", "-in", p(&key), "-pubout", "-out", p(&pubkey)];
            if pkcs1 {
                args = vec!["rsa", "-in", p(&key), "-RSAPublicKey_out", "-out", p(&pubkey)];
            }
            openssl(&args)?;
            let body = dir.join("body.json");
            std::fs::write(&body, br#"{"format":"tbox-report/1"}"#)?;
            let sig = openssl(&["dgst", "-sha256", "-sign", p(&key), p(&body)])?;
            let sig_b64 = BASE64.encode(sig);

            let public = PublicKey::from_pem(&std::fs::read_to_string(&pubkey)?)?;
            public.verify(&std::fs::read(&body)?, &sig_b64)?;
            assert_eq!(public.verify(b"{\"format\":\"tbox-report/2\"}", &sig_b64), Err(SignatureError::Mismatch));

            // The fingerprint is the one openssl's DER gives.
            let der = openssl(&["pkey", "-pubin", "-in", p(&pubkey), "-outform", "DER"])?;
            assert_eq!(public.fingerprint(), format!("SHA256:{}", hex(&Sha256::digest(der))));

            // The same key read through our private-key parser signs identically.
            let private = PrivateKey::from_pem(&std::fs::read_to_string(&key)?)?;
            assert_eq!(private.sign(&std::fs::read(&body)?), sig_b64);
        }
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn crate_signature_verifies_with_openssl() -> TestResult {
        if !openssl_available() {
            return Ok(());
        }
        let dir = tempdir("crate-sign")?;
        let key = PrivateKey::generate(&mut rand_core::OsRng, 2048)?;
        let pubkey = dir.join("k.pub");
        std::fs::write(&pubkey, key.public_key().to_pem())?;
        let body = dir.join("body.json");
        std::fs::write(&body, b"{\"any\": \"bytes\"}\n")?;
        let sig = dir.join("sig.bin");
        std::fs::write(&sig, BASE64.decode(key.sign(&std::fs::read(&body)?))?)?;
        let out = openssl(&["dgst", "-sha256", "-verify", p(&pubkey), "-signature", p(&sig), p(&body)])?;
        assert_eq!(String::from_utf8(out)?.trim(), "Verified OK");
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn small_keys_and_garbage_are_refused() -> TestResult {
        let small = RsaPrivateKey::new(&mut rand_core::OsRng, 1024)?;
        let pem = small.to_public_key().to_public_key_pem(LineEnding::LF)?;
        assert_eq!(PublicKey::from_pem(&pem), Err(KeyError::BadSize(1024)));
        assert_eq!(PublicKey::from_pem("hello"), Err(KeyError::NotPem));
        assert!(PrivateKey::generate(&mut rand_core::OsRng, 1024).is_err());
        Ok(())
    }

    #[test]
    fn sign_verify_round_trip_and_tamper() -> TestResult {
        let key = PrivateKey::generate(&mut rand_core::OsRng, 2048)?;
        let public = PublicKey::from_pem(&key.public_key().to_pem())?;
        let sig = key.sign(b"body");
        public.verify(b"body", &sig)?;
        assert_eq!(public.verify(b"bodY", &sig), Err(SignatureError::Mismatch));
        assert_eq!(public.verify(b"body", "***"), Err(SignatureError::NotBase64));
        assert_eq!(public.verify(b"body", "AAAA"), Err(SignatureError::Mismatch));
        assert!(public.fingerprint().starts_with("SHA256:"));
        assert_eq!(public.fingerprint().len(), 7 + 64);
        assert!(!format!("{key:?}").contains("BEGIN"));
        Ok(())
    }

    #[test]
    fn report_id_is_sha256_hex() {
        assert_eq!(report_id(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
