// Command gitops-check answers, with the GitOps tools' own Go code, how they see the operator's
// objects and endpoints. The tests run it; it decides nothing itself. Objects arrive as a JSON
// array on standard input; answers leave as JSON on standard output, one per object, in order.
//
//	gitops-check kstatus                          Flux's view: sigs.k8s.io/cli-utils kstatus
//	gitops-check argocd-health NAMESPACE          Argo CD's resource health, with the health
//	                                              checks of the argocd-cm ConfigMap in NAMESPACE
//	                                              of the cluster $KUBECONFIG names, read by Argo
//	                                              CD's own settings manager
//	gitops-check plugin BASE_URL APPSET_NAME      Argo CD's ApplicationSet plugin generator client:
//	                                              stdin is the input parameters (a JSON object),
//	                                              the token is $PLUGIN_TOKEN; prints the response,
//	                                              or the client's error on stderr with exit 1
//	gitops-check appset-refresh                   whether Argo CD's ApplicationSet controller sees
//	                                              a refresh requested on each ApplicationSet
//	                                              (ApplicationSet.RefreshRequired, what its
//	                                              reconcile acts on and then clears)
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/argoproj/argo-cd/gitops-engine/v3/pkg/health"
	"github.com/argoproj/argo-cd/v3/applicationset/services/plugin"
	"github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// Answer is one object's result.
type Answer struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: gitops-check kstatus | argocd-health NAMESPACE | plugin BASE_URL APPSET_NAME | appset-refresh")
	}
	input, err := io.ReadAll(os.Stdin)
	check(err, "reading standard input")
	switch os.Args[1] {
	case "kstatus":
		answer(objects(input), kstatus)
	case "argocd-health":
		if len(os.Args) != 3 {
			fail("usage: gitops-check argocd-health NAMESPACE")
		}
		overrides := argoOverrides(os.Args[2])
		answer(objects(input), func(obj *unstructured.Unstructured) Answer {
			// The path Argo CD's controller takes for every resource it shows.
			hs, err := health.GetResourceHealth(obj, lua.ResourceHealthOverrides(overrides))
			if err != nil {
				return Answer{Status: "Error", Message: err.Error()}
			}
			if hs == nil {
				return Answer{Status: "None", Message: "no health check applies"}
			}
			return Answer{Status: string(hs.Status), Message: hs.Message}
		})
	case "plugin":
		if len(os.Args) != 4 {
			fail("usage: gitops-check plugin BASE_URL APPSET_NAME")
		}
		var parameters v1alpha1.PluginParameters
		check(json.Unmarshal(input, &parameters), "reading the input parameters")
		service, err := plugin.NewPluginService(os.Args[3], os.Args[2], os.Getenv("PLUGIN_TOKEN"), 30)
		check(err, "making the plugin client")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		response, err := service.List(ctx, parameters)
		check(err, "")
		print(response)
	case "appset-refresh":
		answer(objects(input), func(obj *unstructured.Unstructured) Answer {
			var appSet v1alpha1.ApplicationSet
			raw, err := obj.MarshalJSON()
			if err == nil {
				err = json.Unmarshal(raw, &appSet)
			}
			if err != nil {
				return Answer{Status: "Error", Message: err.Error()}
			}
			if appSet.RefreshRequired() {
				return Answer{Status: "RefreshRequired"}
			}
			return Answer{Status: "None"}
		})
	default:
		fail("unknown check " + os.Args[1])
	}
}

func kstatus(obj *unstructured.Unstructured) Answer {
	result, err := status.Compute(obj)
	if err != nil {
		return Answer{Status: "Error", Message: err.Error()}
	}
	return Answer{Status: string(result.Status), Message: result.Message}
}

// argoOverrides reads the resource customizations as Argo CD does: its settings manager on the
// argocd-cm ConfigMap (labelled app.kubernetes.io/part-of: argocd) of namespace.
func argoOverrides(namespace string) map[string]v1alpha1.ResourceOverride {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	config, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	check(err, "reading the kubeconfig")
	clientset, err := kubernetes.NewForConfig(config)
	check(err, "making a Kubernetes client")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	overrides, err := settings.NewSettingsManager(ctx, clientset, namespace).GetResourceOverrides()
	check(err, "reading argocd-cm")
	return overrides
}

func objects(input []byte) []*unstructured.Unstructured {
	// JSON, not YAML: integers stay int64, as they are when read from the API server.
	var raw []json.RawMessage
	check(json.Unmarshal(input, &raw), "reading the objects")
	objs := make([]*unstructured.Unstructured, 0, len(raw))
	for _, item := range raw {
		obj := &unstructured.Unstructured{}
		check(obj.UnmarshalJSON(item), "reading an object")
		objs = append(objs, obj)
	}
	return objs
}

func answer(objs []*unstructured.Unstructured, of func(*unstructured.Unstructured) Answer) {
	answers := make([]Answer, 0, len(objs))
	for _, obj := range objs {
		a := of(obj)
		a.Name = obj.GetName()
		answers = append(answers, a)
	}
	print(answers)
}

func print(value any) {
	out, err := json.Marshal(value)
	check(err, "writing the answer")
	fmt.Println(string(out))
}

func check(err error, doing string) {
	if err != nil {
		if doing != "" {
			fail(doing + ": " + err.Error())
		}
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, message)
	os.Exit(1)
}
