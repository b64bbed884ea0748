//! The client over TLS, as against a Data Center instance behind a private CA: trusted with the
//! integration's CA bundle, refused without it. A TLS terminator in front of the simulator plays
//! the instance's HTTPS endpoint.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bitbucket_operator::bitbucket::{
    Client, Credentials, Error, RetryPolicy, Server, TransportConfig,
};
use bitbucket_sim::{Fixture, Simulator};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

/// A private CA and a serving certificate it signed for 127.0.0.1.
struct Pki {
    ca_pem: String,
    server: rustls::ServerConfig,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server,
    }
}

/// Terminates TLS on a free port and forwards each connection to `backend`.
async fn tls_terminator(server: rustls::ServerConfig, backend: SocketAddr) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake: nothing to forward.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    address
}

fn client(address: SocketAddr, ca_bundle_pem: Option<Vec<u8>>) -> Client {
    let server = format!("https://127.0.0.1:{}", address.port());
    Client::new(
        Server::DataCenter {
            base_url: Url::parse(&server).unwrap(),
        },
        Credentials::DataCenterBasic {
            username: "jdoe".into(),
            password: "FAKE-dc-password-jdoe".into(),
        },
        TransportConfig {
            ca_bundle_pem,
            allowed: server.parse().unwrap(),
            timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            ..TransportConfig::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_private_ca_is_trusted_through_the_integrations_ca_bundle_and_only_then() {
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let backend: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let pki = pki();
    let https = tls_terminator(pki.server, backend).await;

    let trusted = client(https, Some(pki.ca_pem.into_bytes()));
    let identity = trusted.whoami(None).await.unwrap();
    assert_eq!(identity.username.as_deref(), Some("jdoe"));

    let untrusted = client(https, None);
    let error = untrusted.whoami(None).await.unwrap_err();
    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "the error says why: {error}"
    );
}
