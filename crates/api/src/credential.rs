//! The Secret → credential mapping, written once: which keys each credential type reads from its
//! Secret ([`CredentialType::secret_keys`], the one table), which servers take which types,
//! reading a Secret into a [`SecretCredential`], and — with the `client` feature — turning it
//! into the Bitbucket client's own credential and server. The controllers, the plugin and the
//! CRD's description all use this table. Pure: no I/O.

use k8s_openapi::{ByteString, api::core::v1::Secret};
use secrecy::SecretString;

use crate::{CredentialType, ServerType};

/// The Secret keys of one credential type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretKeys {
    /// The key of the value that is not secret (`email`, `clientId`, `username`), if the type
    /// has one.
    pub identity: Option<&'static str>,
    /// The key of the secret value (`token`, `clientSecret`, `password`).
    pub secret: &'static str,
    /// The key of the refresh token a signed-in user's Secret also holds.
    pub refresh_token: Option<&'static str>,
}

impl SecretKeys {
    /// Every key, in the order a user fills them in.
    pub fn all(self) -> impl Iterator<Item = &'static str> {
        self.identity
            .into_iter()
            .chain([self.secret])
            .chain(self.refresh_token)
    }
}

/// The key of a signed-in user's refresh token, the one key the operator writes.
pub const REFRESH_TOKEN_KEY: &str = "refreshToken";

impl CredentialType {
    /// Every type, in the order the CRD lists them.
    pub const ALL: [Self; 5] = [
        Self::ApiToken,
        Self::AccessToken,
        Self::OAuthConsumer,
        Self::OAuthUser,
        Self::Basic,
    ];

    /// The Secret keys this type reads: the one table (design.md, "Secret keys, by type").
    pub const fn secret_keys(self) -> SecretKeys {
        let (identity, secret, refresh_token) = match self {
            Self::ApiToken => (Some("email"), "token", None),
            Self::AccessToken => (None, "token", None),
            Self::OAuthConsumer => (Some("clientId"), "clientSecret", None),
            Self::OAuthUser => (Some("clientId"), "clientSecret", Some(REFRESH_TOKEN_KEY)),
            Self::Basic => (Some("username"), "password", None),
        };
        SecretKeys {
            identity,
            secret,
            refresh_token,
        }
    }

    /// The name users write in `credentials.type`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ApiToken => "ApiToken",
            Self::AccessToken => "AccessToken",
            Self::OAuthConsumer => "OAuthConsumer",
            Self::OAuthUser => "OAuthUser",
            Self::Basic => "Basic",
        }
    }
}

impl ServerType {
    /// The credential types this kind of Bitbucket accepts (the CRD's CEL rules refuse the rest).
    pub const fn credential_types(self) -> &'static [CredentialType] {
        match self {
            Self::Cloud => &[
                CredentialType::ApiToken,
                CredentialType::AccessToken,
                CredentialType::OAuthConsumer,
                CredentialType::OAuthUser,
            ],
            Self::DataCenter => &[CredentialType::AccessToken, CredentialType::Basic],
        }
    }
}

/// Why a Secret holds no usable credential of its declared type: only its writer can fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {secret} has no key {key}: {kind} credentials need the keys {needed}")]
    KeyMissing {
        secret: String,
        key: &'static str,
        kind: &'static str,
        needed: String,
    },
    #[error("Secret {secret} key {key} is not UTF-8 text")]
    NotText { secret: String, key: &'static str },
}

/// A credential as its Secret holds it: the values of its type's keys, checked to be present
/// and text. Redacts its secrets in `Debug`.
#[derive(Clone)]
pub struct SecretCredential {
    pub kind: CredentialType,
    /// The value of [`SecretKeys::identity`], when the type has one.
    pub identity: Option<String>,
    pub secret: SecretString,
    pub refresh_token: Option<SecretString>,
}

impl std::fmt::Debug for SecretCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCredential")
            .field("kind", &self.kind)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl SecretCredential {
    /// Reads the keys `kind` needs from `secret` (called `secret_name` in messages).
    pub fn read(
        kind: CredentialType,
        secret: &Secret,
        secret_name: &str,
    ) -> Result<Self, SecretError> {
        let keys = kind.secret_keys();
        let get = |key| text(secret, secret_name, key, kind);
        Ok(Self {
            kind,
            identity: keys.identity.map(get).transpose()?,
            secret: get(keys.secret)?.into(),
            refresh_token: keys.refresh_token.map(get).transpose()?.map(Into::into),
        })
    }
}

/// One key of a Secret as text, without the trailing newline files usually end with; an empty
/// value counts as missing.
fn text(
    secret: &Secret,
    secret_name: &str,
    key: &'static str,
    kind: CredentialType,
) -> Result<String, SecretError> {
    let missing = || SecretError::KeyMissing {
        secret: secret_name.to_owned(),
        key,
        kind: kind.name(),
        needed: kind.secret_keys().all().collect::<Vec<_>>().join(", "),
    };
    let value = value_of(secret, key).ok_or_else(missing)?;
    let text = String::from_utf8(value).map_err(|_| SecretError::NotText {
        secret: secret_name.to_owned(),
        key,
    })?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        Err(missing())
    } else {
        Ok(text.to_owned())
    }
}

/// The bytes of one key of a Secret, from `data` or (not yet stored) `stringData`.
pub fn value_of(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|ByteString(bytes)| bytes.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|text| text.clone().into_bytes())
        })
}

#[cfg(feature = "client")]
mod client {
    use bitbucket_client::{Credentials, Server};
    use url::Url;

    use super::SecretCredential;
    use crate::{CLOUD_API_URL, CredentialType, ServerType};

    impl SecretCredential {
        /// The credential as the Bitbucket client sends it to a server of `server` type.
        pub fn for_server(self, server: ServerType) -> Credentials {
            let identity = self.identity.unwrap_or_default();
            match (self.kind, server) {
                (CredentialType::ApiToken, _) => Credentials::CloudApiToken {
                    email: identity,
                    token: self.secret,
                },
                (CredentialType::AccessToken, ServerType::Cloud) => {
                    Credentials::CloudAccessToken { token: self.secret }
                }
                (CredentialType::AccessToken, ServerType::DataCenter) => {
                    Credentials::DataCenterAccessToken { token: self.secret }
                }
                (CredentialType::OAuthConsumer, _) => Credentials::CloudOAuthConsumer {
                    client_id: identity,
                    client_secret: self.secret,
                },
                (CredentialType::OAuthUser, _) => Credentials::CloudOAuthUser {
                    client_id: identity,
                    client_secret: self.secret,
                    refresh_token: self.refresh_token.unwrap_or_default(),
                },
                (CredentialType::Basic, _) => Credentials::DataCenterBasic {
                    username: identity,
                    password: self.secret,
                },
            }
        }
    }

    /// Where an integration's Bitbucket is, for the client; `Err` names the field at fault.
    pub fn server(server: &crate::Server) -> Result<Server, String> {
        let url = server.url.as_deref();
        let parse = |url: &str| Url::parse(url).map_err(|e| format!("server.url {url:?}: {e}"));
        Ok(match server.server_type {
            ServerType::Cloud => Server::Cloud {
                api_url: parse(url.unwrap_or(CLOUD_API_URL))?,
            },
            ServerType::DataCenter => Server::DataCenter {
                base_url: parse(url.ok_or("server.url is required for DataCenter")?)?,
            },
        })
    }
}

#[cfg(feature = "client")]
pub use client::server;

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn each_type_reads_its_keys_and_drops_a_trailing_newline() {
        use secrecy::ExposeSecret as _;
        let api = SecretCredential::read(
            CredentialType::ApiToken,
            &secret(&[("email", "jane@example.com"), ("token", "t0k\n")]),
            "s",
        )
        .unwrap();
        assert_eq!(api.identity.as_deref(), Some("jane@example.com"));
        assert_eq!(api.secret.expose_secret(), "t0k");
        assert_eq!(
            format!("{api:?}"),
            r#"SecretCredential { kind: ApiToken, identity: Some("jane@example.com"), .. }"#
        );
        let user = SecretCredential::read(
            CredentialType::OAuthUser,
            &secret(&[
                ("clientId", "c"),
                ("clientSecret", "s"),
                ("refreshToken", "r"),
            ]),
            "s",
        )
        .unwrap();
        assert_eq!(user.refresh_token.unwrap().expose_secret(), "r");
    }

    #[test]
    fn a_missing_or_empty_key_is_named_with_the_keys_the_type_needs() {
        let error = SecretCredential::read(
            CredentialType::OAuthConsumer,
            &secret(&[("clientId", "id"), ("clientSecret", "")]),
            "acme-oauth",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Secret acme-oauth has no key clientSecret: OAuthConsumer credentials need the keys clientId, clientSecret"
        );
    }

    /// The CRD's description is prose for `kubectl explain`; it must say what the table says.
    #[test]
    fn the_crds_description_names_each_types_keys_from_the_table() {
        let crd = serde_json::to_string(&crate::crds()).unwrap();
        for kind in CredentialType::ALL {
            let keys: Vec<String> = kind
                .secret_keys()
                .all()
                .map(|key| format!("`{key}`"))
                .collect();
            let said = format!("`{}` (", kind.name());
            let at = crd
                .find(&said)
                .unwrap_or_else(|| panic!("the description does not mention {said}"));
            let sentence = &crd[at..at + crd[at..].find(')').unwrap()];
            for key in &keys {
                assert!(sentence.contains(key.as_str()), "{sentence} lacks {key}");
            }
        }
    }

    #[cfg(feature = "client")]
    #[test]
    fn an_access_token_is_sent_as_the_servers_kind_of_token() {
        let read = || {
            SecretCredential::read(CredentialType::AccessToken, &secret(&[("token", "t")]), "s")
                .unwrap()
        };
        assert!(matches!(
            read().for_server(ServerType::DataCenter),
            bitbucket_client::Credentials::DataCenterAccessToken { .. }
        ));
        assert!(matches!(
            read().for_server(ServerType::Cloud),
            bitbucket_client::Credentials::CloudAccessToken { .. }
        ));
    }
}
