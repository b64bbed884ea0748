//go:build tools

// Package tools pins promtool for hack/gitops.sh, which builds
// github.com/prometheus/prometheus/cmd/promtool from this module's checksummed graph, to check
// the chart's alerts (charts/bitbucket-operator/files/alerts.yaml) with alerts_test.yaml.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
