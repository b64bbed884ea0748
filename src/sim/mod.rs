//! A Bitbucket simulator (Cloud 2.0, Data Center 1.0, OAuth token endpoint) on loopback, for
//! tests, benchmarks and the local demo. Shares no types with `crate::bitbucket`.
