{{/* The labels every object carries (as deploy/ does). */}}
{{- define "bitbucket-operator.labels" -}}
app.kubernetes.io/name: bitbucket-operator
{{- end }}

{{/* The name of the Deployment of shard `.` (and of its Lease and Services): the main one for "". */}}
{{- define "bitbucket-operator.name" -}}
bitbucket-operator{{ if . }}-{{ . }}{{ end }}
{{- end }}

{{/* The pod labels a Deployment of shard `.` selects (its Services and PodDisruptionBudget too). */}}
{{- define "bitbucket-operator.selector" -}}
app.kubernetes.io/name: {{ include "bitbucket-operator.name" . }}
{{- end }}

{{/* The operator's permissions, the same for the ClusterRole and each namespaced Role. */}}
{{- define "bitbucket-operator.rules" -}}
- apiGroups: [scm.shippable.io]
  resources: [bitbucketintegrations, subscriptions]
  verbs: [get, list, watch, patch]
- apiGroups: [scm.shippable.io]
  resources: [bitbucketintegrations/status, subscriptions/status]
  verbs: [get, patch]
- apiGroups: [scm.shippable.io]
  resources: [bitbucketintegrations/finalizers]
  verbs: [update]
# The Subscriptions' whole repository lists (only the operator may write them: the
# admission policy repositoryslice-writes.scm.shippable.io).
- apiGroups: [scm.shippable.io]
  resources: [repositoryslices]
  verbs: [get, list, watch, create, update, patch, delete]
# patch: only the refresh tokens of OAuthUser Secrets, as the admission policy
# bitbucket-operator-secret-writes.scm.shippable.io enforces.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* Where Bitbucket reaches the webhook receiver: webhooks.url, else the Ingress's host. */}}
{{- define "bitbucket-operator.webhookUrl" -}}
{{- if .Values.webhooks.url -}}
{{- .Values.webhooks.url -}}
{{- else if and .Values.webhooks.ingress.enabled .Values.webhooks.ingress.host -}}
{{- if .Values.webhooks.ingress.tls -}}https{{- else -}}http{{- end -}}://{{ .Values.webhooks.ingress.host }}
{{- end -}}
{{- end }}
