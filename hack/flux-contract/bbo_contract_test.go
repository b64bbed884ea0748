// The Flux Operator's own ExternalService client, run against the operator's endpoint.
//
// hack/gitops.sh copies this file into the package internal/controller of the pinned Flux
// Operator module (whose other tests it leaves out: they need envtest) and compiles the package's
// test binary. The test calls the unexported callExternalServiceProvider, the code Flux runs for
// a ResourceSetInputProvider of type ExternalService, with:
//
//	BBO_FLUX_URL    spec.url
//	BBO_FLUX_TOKEN  the Secret's `token` key (sent as a Bearer token)
//	BBO_FLUX_LIMIT  spec.filter.limit (Flux's default, 100, when empty)
//
// and prints one line `BBO-RESULT {"inputs": [...]}` or `BBO-RESULT {"error": "..."}`.

package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"

	fluxcdv1 "github.com/controlplaneio-fluxcd/flux-operator/api/v1"
)

func TestBitbucketOperatorContract(t *testing.T) {
	obj := &fluxcdv1.ResourceSetInputProvider{
		Spec: fluxcdv1.ResourceSetInputProviderSpec{
			Type:     fluxcdv1.InputProviderExternalService,
			URL:      os.Getenv("BBO_FLUX_URL"),
			Insecure: true,
		},
	}
	if limit, err := strconv.Atoi(os.Getenv("BBO_FLUX_LIMIT")); err == nil {
		obj.Spec.Filter = &fluxcdv1.ResourceSetInputFilter{Limit: limit}
	}
	r := &ResourceSetInputProviderReconciler{Version: "bbo-contract"}
	auth := map[string][]byte{"token": []byte(os.Getenv("BBO_FLUX_TOKEN"))}
	inputs, err := r.callExternalServiceProvider(context.Background(), obj, nil, auth, nil)
	result := map[string]any{"inputs": inputs}
	if err != nil {
		result = map[string]any{"error": err.Error()}
	}
	line, _ := json.Marshal(result)
	fmt.Printf("BBO-RESULT %s\n", line)
}
