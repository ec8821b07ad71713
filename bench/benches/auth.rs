//! What authenticating one request costs: an API key (SHA-256 and a
//! constant-time compare against every configured key) against an OIDC JWT
//! (header and claims parsed, the signature verified, the claims checked)
//! with the issuer's keys already cached, as after the first token. Each
//! group's comment line says what the numbers show.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use framegate::auth::oidc::{OidcIssuerConfig, OidcVerifier};
use framegate::auth::Authenticator;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ISS: &str = "https://login.example.test/realms/acme";

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A verifier with one RS256 and one ES256 key installed, and a valid token
/// for each.
fn setup() -> (OidcVerifier, String, String) {
    let config: OidcIssuerConfig = toml::from_str(&format!(
        "name = \"kc\"\nissuer = \"{ISS}\"\naudience = \"framegate\"\n"
    ))
    .unwrap();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (n, e) = rsa_components(rsa.public_key_raw());
    let raw = ec.public_key_raw();
    let jwks = json!({"keys": [
        {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "rs", "n": b64(&n), "e": b64(&e)},
        {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "es",
         "x": b64(&raw[1..33]), "y": b64(&raw[33..65])},
    ]});
    let verifier = OidcVerifier::new(&[config]).unwrap();
    assert_eq!(
        verifier
            .install_jwks("kc", jwks.to_string().as_bytes())
            .unwrap(),
        2
    );
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": ISS, "aud": "framegate", "sub": "svc-1", "tenant": "acme",
        "scope": "profile email stream detect", "exp": now + 86_400, "iat": now,
    });
    let sign = |alg, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    };
    let rs = sign(
        Algorithm::RS256,
        "rs",
        &EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).unwrap(),
    );
    let es = sign(
        Algorithm::ES256,
        "es",
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    );
    (verifier, rs, es)
}

/// n and e of a PKCS#1 RSAPublicKey (SEQUENCE { INTEGER n, INTEGER e }).
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn tlv(b: &[u8]) -> (&[u8], &[u8]) {
        let (len, hdr) = if b[1] & 0x80 == 0 {
            (b[1] as usize, 2)
        } else {
            let k = (b[1] & 0x7f) as usize;
            (
                b[2..2 + k].iter().fold(0usize, |a, x| a << 8 | *x as usize),
                2 + k,
            )
        };
        (&b[hdr..hdr + len], &b[hdr + len..])
    }
    let (seq, _) = tlv(der);
    let (n, rest) = tlv(seq);
    let (e, _) = tlv(rest);
    let strip = |v: &[u8]| v.iter().skip_while(|b| **b == 0).copied().collect();
    (strip(n), strip(e))
}

/// Shows: a cached-key JWT check costs tens to a hundred-odd microseconds
/// (RS256 verification is cheaper than ES256), against under a microsecond
/// for an API key; paid once per request or session, never per streamed frame.
fn auth(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (verifier, rs, es) = setup();
    let mut g = c.benchmark_group("auth");
    g.bench_function("jwt_rs256_cached_key", |b| {
        b.iter(|| rt.block_on(verifier.check(black_box(&rs))).unwrap())
    });
    g.bench_function("jwt_es256_cached_key", |b| {
        b.iter(|| rt.block_on(verifier.check(black_box(&es))).unwrap())
    });
    let keys = Authenticator::single("fg_dev_0123456789abcdef0123456789abcdef", "dev");
    g.bench_function("api_key", |b| {
        b.iter(|| {
            rt.block_on(keys.authenticate(black_box("fg_dev_0123456789abcdef0123456789abcdef")))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, auth);
criterion_main!(benches);
