//! Credentials and how each is sent. Secrets are held in [`SecretString`] and never printed:
//! `Debug` and `Display` show the kind and non-secret parts only. No I/O.

use std::fmt;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

/// A Bitbucket credential, as read from a Kubernetes Secret.
#[derive(Clone)]
pub enum Credentials {
    /// Cloud Atlassian API token: Basic `email:token`.
    CloudApiToken { email: String, token: SecretString },
    /// Cloud workspace, project or repository access token: `Bearer`.
    CloudAccessToken { token: SecretString },
    /// Cloud OAuth consumer: client-credentials grant, then `Bearer`.
    CloudOAuthConsumer {
        client_id: String,
        client_secret: SecretString,
    },
    /// Cloud user who signed in through an OAuth consumer: refresh-token grant, then `Bearer`.
    /// Bitbucket hands out a new refresh token with each grant (api-facts §B.4).
    CloudOAuthUser {
        client_id: String,
        client_secret: SecretString,
        refresh_token: SecretString,
    },
    /// Data Center HTTP access token (personal, project or repository): `Bearer`.
    DataCenterAccessToken { token: SecretString },
    /// Data Center username with a password or personal token: Basic.
    DataCenterBasic {
        username: String,
        password: SecretString,
    },
}

impl Credentials {
    /// A short, non-secret name of the kind, for logs and messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CloudApiToken { .. } => "Cloud API token",
            Self::CloudAccessToken { .. } => "Cloud access token",
            Self::CloudOAuthConsumer { .. } => "Cloud OAuth consumer",
            Self::CloudOAuthUser { .. } => "Cloud OAuth user",
            Self::DataCenterAccessToken { .. } => "Data Center access token",
            Self::DataCenterBasic { .. } => "Data Center username and password",
        }
    }

    /// Whether these are Bitbucket Cloud credentials (as opposed to Data Center).
    pub fn is_cloud(&self) -> bool {
        matches!(
            self,
            Self::CloudApiToken { .. }
                | Self::CloudAccessToken { .. }
                | Self::CloudOAuthConsumer { .. }
                | Self::CloudOAuthUser { .. }
        )
    }

    /// The `Authorization` header value, except for OAuth consumers, whose Bearer token must
    /// first be obtained from the token endpoint (see `oauth`).
    pub(crate) fn static_authorization(&self) -> Option<SecretString> {
        match self {
            Self::CloudApiToken { email, token } => Some(basic(email, token)),
            Self::DataCenterBasic { username, password } => Some(basic(username, password)),
            Self::CloudAccessToken { token } | Self::DataCenterAccessToken { token } => {
                Some(bearer(token.expose_secret()))
            }
            Self::CloudOAuthConsumer { .. } | Self::CloudOAuthUser { .. } => None,
        }
    }
}

pub(crate) fn basic(user: &str, secret: &SecretString) -> SecretString {
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{user}:{}", secret.expose_secret()));
    format!("Basic {encoded}").into()
}

pub(crate) fn bearer(token: &str) -> SecretString {
    format!("Bearer {token}").into()
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REDACTED: &str = "<redacted>";
        match self {
            Self::CloudApiToken { email, .. } => f
                .debug_struct("CloudApiToken")
                .field("email", email)
                .field("token", &REDACTED)
                .finish(),
            Self::CloudAccessToken { .. } => f
                .debug_struct("CloudAccessToken")
                .field("token", &REDACTED)
                .finish(),
            Self::CloudOAuthConsumer { client_id, .. } => f
                .debug_struct("CloudOAuthConsumer")
                .field("client_id", client_id)
                .field("client_secret", &REDACTED)
                .finish(),
            Self::CloudOAuthUser { client_id, .. } => f
                .debug_struct("CloudOAuthUser")
                .field("client_id", client_id)
                .field("client_secret", &REDACTED)
                .field("refresh_token", &REDACTED)
                .finish(),
            Self::DataCenterAccessToken { .. } => f
                .debug_struct("DataCenterAccessToken")
                .field("token", &REDACTED)
                .finish(),
            Self::DataCenterBasic { username, .. } => f
                .debug_struct("DataCenterBasic")
                .field("username", username)
                .field("password", &REDACTED)
                .finish(),
        }
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CloudApiToken { email, .. } => write!(f, "{} for {email}", self.kind()),
            Self::CloudOAuthConsumer { client_id, .. } => {
                write!(f, "{} {client_id}", self.kind())
            }
            Self::CloudOAuthUser { client_id, .. } => {
                write!(f, "{} through consumer {client_id}", self.kind())
            }
            Self::DataCenterBasic { username, .. } => write!(f, "{} for {username}", self.kind()),
            Self::CloudAccessToken { .. } | Self::DataCenterAccessToken { .. } => {
                f.write_str(self.kind())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-value-that-must-not-leak";

    fn every_kind() -> Vec<Credentials> {
        vec![
            Credentials::CloudApiToken {
                email: "jane@example.com".into(),
                token: SECRET.into(),
            },
            Credentials::CloudAccessToken {
                token: SECRET.into(),
            },
            Credentials::CloudOAuthConsumer {
                client_id: "consumer-key".into(),
                client_secret: SECRET.into(),
            },
            Credentials::CloudOAuthUser {
                client_id: "consumer-key".into(),
                client_secret: SECRET.into(),
                refresh_token: SECRET.into(),
            },
            Credentials::DataCenterAccessToken {
                token: SECRET.into(),
            },
            Credentials::DataCenterBasic {
                username: "ci-bot".into(),
                password: SECRET.into(),
            },
        ]
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        for credentials in every_kind() {
            let shown = format!("{credentials:?} {credentials} {credentials:#?}");
            assert!(!shown.contains(SECRET), "leaked in {shown}");
            assert!(!shown.contains("czNjcjN0"), "leaked base64 in {shown}");
        }
    }

    #[test]
    fn debug_keeps_the_non_secret_parts_for_diagnosis() {
        let shown = format!("{:?}", every_kind()[0]);
        assert_eq!(
            shown,
            r#"CloudApiToken { email: "jane@example.com", token: "<redacted>" }"#
        );
    }

    #[test]
    fn basic_credentials_are_sent_as_user_colon_secret_in_base64() {
        let header = every_kind()[0].static_authorization().unwrap();
        let expected =
            base64::engine::general_purpose::STANDARD.encode(format!("jane@example.com:{SECRET}"));
        assert_eq!(header.expose_secret(), format!("Basic {expected}"));
    }

    #[test]
    fn tokens_are_sent_as_bearer() {
        let header = every_kind()[1].static_authorization().unwrap();
        assert_eq!(header.expose_secret(), format!("Bearer {SECRET}"));
        assert!(every_kind()[2].static_authorization().is_none());
    }
}
