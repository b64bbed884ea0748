//! Bitbucket client (Cloud 2.0 and Data Center 1.0): credentials, identity, repository listing,
//! errors. No kube imports.
