//! Fleet mode over TLS against a real PostgreSQL (`POLICYD_TEST_POSTGRES`): a URL with
//! `sslmode=require` is served through a TLS-terminating proxy whose certificate a test CA
//! signs. With the CA trusted (`--upstream-ca`) the fleet works and every connection was
//! encrypted; without it nothing connects.

mod common;
mod upstream_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::StatusCode;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use upstream_support::{Sidecar, host_of, policies, test_db, upstream_cli, user, with_host};

/// The first message of a client that asks for TLS: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// A proxy that speaks PostgreSQL's TLS upgrade on its side and plain TCP to the server.
struct TlsProxy {
    addr: SocketAddr,
    /// Connections that completed a TLS handshake.
    encrypted: Arc<AtomicUsize>,
    /// Connections that did not ask for TLS (dropped).
    plain: Arc<AtomicUsize>,
}

impl TlsProxy {
    /// A proxy to `target` presenting `chain` for `localhost`.
    async fn start(
        target: String,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> TlsProxy {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (encrypted, plain) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (enc, pla) = (encrypted.clone(), plain.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (acceptor, target, enc, pla) =
                    (acceptor.clone(), target.clone(), enc.clone(), pla.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 8];
                    if inbound.read_exact(&mut first).await.is_err() || first != SSL_REQUEST {
                        pla.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    if inbound.write_all(b"S").await.is_err() {
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(inbound).await else {
                        return;
                    };
                    enc.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
                });
            }
        });
        TlsProxy {
            addr,
            encrypted,
            plain,
        }
    }
}

/// A test CA (its PEM) and a server certificate it signed for `localhost`.
fn certificates() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "policyd test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    (ca.pem(), vec![server.der().clone()], key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_tls_verifies_the_upstream_and_encrypts_every_connection() {
    let Some(db) = test_db("tls").await else {
        return;
    };
    upstream_cli(&db.url, &["migrate"]);
    let (ca_pem, chain, key) = certificates();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let proxy = TlsProxy::start(host_of(&db.url).to_owned(), chain, key).await;
    // The certificate names `localhost`; the address is the proxy's.
    let url = with_host(&db.url, &format!("localhost:{}", proxy.addr.port()))
        + "?sslmode=require&hostaddr=127.0.0.1";

    // Without the CA the server cannot be verified: nothing is sent in the clear instead.
    let out = common::policyd_command()
        .args(["upstream", "migrate"])
        .env("POLICYD_UPSTREAM", &url)
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unverified upstream was accepted");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    // A CA file without sslmode=require is a mistake, said at once.
    let out = common::policyd_command()
        .args(["upstream", "migrate", "--upstream-ca"])
        .arg(&ca)
        .env("POLICYD_UPSTREAM", &db.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sslmode=require"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With it, a sidecar follows the upstream and writes through it, all over TLS.
    let pol = policies();
    let ca_arg = ca.to_str().unwrap();
    let s = Sidecar::start(
        pol.path(),
        &dir.path().join("p.db"),
        &url,
        &["--upstream-ca", ca_arg],
    );
    s.ready().await;
    let token = s.put(user("alice", true)).await;
    let (status, body) = s.read("alice", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["decision"], "Allow", "{body}");
    let (status, body) = s.call("GET", "/v1/entities/User/alice", &[], None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        proxy.encrypted.load(Ordering::SeqCst) >= 2,
        "pool and listener"
    );
    assert_eq!(proxy.plain.load(Ordering::SeqCst), 0);
}
