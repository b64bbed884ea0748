//! What the client returns: who a credential is, and the repositories it can see. Plain data,
//! independent of both Bitbucket's JSON and the Kubernetes API types. No I/O.

/// What kind of identity a credential is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    /// A Bitbucket Cloud user (API token).
    User,
    /// A Bitbucket Cloud workspace, project or repository access token (not a user).
    AccessToken,
    /// A Bitbucket Cloud OAuth consumer (client credentials; acts for its owner).
    OAuthConsumer,
    /// A Bitbucket Data Center user (including the service users behind project tokens).
    DataCenterUser,
}

/// Who a credential authenticates as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub kind: IdentityKind,
    pub username: Option<String>,
    pub display_name: Option<String>,
    /// Cloud: the account UUID in braces.
    pub uuid: Option<String>,
    /// Cloud: the Atlassian account ID.
    pub account_id: Option<String>,
    /// The scopes Bitbucket reports for the credential (`X-OAuth-Scopes`), sorted; empty when it
    /// reports none.
    pub scopes: Vec<String>,
}

/// Where to list repositories.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListScope {
    /// A Cloud workspace, optionally only some of its projects (filtered by Bitbucket).
    CloudWorkspace {
        workspace: String,
        projects: Vec<String>,
    },
    /// Data Center: these projects, or every repository the credential can see when empty.
    DataCenter { projects: Vec<String> },
}

/// A cheap summary of a listing: how many repositories there are and the newest change. Equal
/// summaries before and after an interval mean nothing was added, removed, renamed or changed
/// (Bitbucket moves `updated_on` on each of those), so the full listing can be skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListingSummary {
    pub size: u64,
    pub newest: Option<jiff::Timestamp>,
}

impl ListingSummary {
    /// The summary of a full listing, to compare a later probe with.
    pub fn of(repositories: &[Repository]) -> Self {
        Self {
            size: repositories.len() as u64,
            newest: repositories.iter().filter_map(|r| r.updated_at).max(),
        }
    }
}

/// One repository, as the operator reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repository {
    /// Bitbucket's id of the repository, which a rename or a move keeps: the Cloud `uuid`
    /// (`{…}`), the Data Center `id` (a number, as text).
    pub id: Option<String>,
    /// `workspace/slug` (Cloud) or `PROJECT/slug` (Data Center).
    pub full_name: String,
    pub slug: String,
    /// The display name.
    pub name: String,
    pub project: Option<String>,
    pub private: bool,
    /// Absent for empty repositories, and on Data Center (whose listing does not carry it).
    pub main_branch: Option<String>,
    /// HTTPS clone URL with any userinfo removed.
    pub clone_https: Option<String>,
    pub clone_ssh: Option<String>,
    pub html_url: Option<String>,
    /// When Bitbucket last saw a change (Cloud `updated_on`).
    pub updated_at: Option<jiff::Timestamp>,
}

/// Removes the userinfo Bitbucket embeds in HTTPS clone links (the caller's username, and in
/// principle anything else), keeping the rest of the URL as it was.
pub(crate) fn strip_userinfo(link: &str) -> String {
    match url::Url::parse(link) {
        Ok(mut url) if url.scheme() == "http" || url.scheme() == "https" => {
            if url.username().is_empty() && url.password().is_none() {
                return link.to_owned();
            }
            // Both setters only fail for URLs that cannot have credentials (not http(s)).
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.into()
        }
        _ => link.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_links_lose_the_callers_username() {
        assert_eq!(
            strip_userinfo(
                "https://sourcegraph-testing@bitbucket.org/sourcegraph-testing/src-cli.git"
            ),
            "https://bitbucket.org/sourcegraph-testing/src-cli.git"
        );
        assert_eq!(
            strip_userinfo("http://admin:hunter2@bb.example:7990/scm/plat/api.git"),
            "http://bb.example:7990/scm/plat/api.git"
        );
    }

    #[test]
    fn ssh_and_clean_links_are_kept_as_they_are() {
        for link in [
            "git@bitbucket.org:acme/api.git",
            "ssh://git@bb.example:7999/plat/api.git",
            "https://bitbucket.org/acme/api.git",
        ] {
            assert_eq!(strip_userinfo(link), link);
        }
    }
}
