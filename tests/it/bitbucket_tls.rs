//! The client over TLS, as against a Data Center instance behind a private CA: trusted with the
//! integration's CA bundle, refused without it. A TLS terminator in front of the simulator plays
//! the instance's HTTPS endpoint.

use std::{net::SocketAddr, time::Duration};

use crate::support::tls::{pki, tls_terminator};
use bitbucket_operator::bitbucket::{
    Client, Credentials, Error, RetryPolicy, Server, TransportConfig,
};
use bitbucket_sim::{Fixture, Simulator};
use url::Url;

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
    let pki = pki("127.0.0.1");
    let https = tls_terminator(pki.server, "127.0.0.1".parse().unwrap(), backend).await;

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
