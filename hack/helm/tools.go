//go:build tools

// Package tools pins helm for hack/gitops.sh, which builds helm.sh/helm/v4/cmd/helm from this
// module's checksummed graph.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
