{{/* Chart name, truncated to 63 characters (a label value). */}}
{{- define "sko.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Object name prefix: <release>-<chart>, or the release name alone when it already contains the
chart name. 52 characters leave room for the longest suffix ("-discovery", "-jwks-server").
*/}}
{{- define "sko.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sko.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object of the release carries. */}}
{{- define "sko.labels" -}}
helm.sh/chart: {{ include "sko.chart" . }}
app.kubernetes.io/name: {{ include "sko.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: signing-key-operator
{{- end -}}

{{/* Selector labels of the operator pods. */}}
{{- define "sko.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sko.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Selector labels of the JWKS server pods. */}}
{{- define "sko.jwks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sko.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: jwks-server
{{- end -}}

{{- define "sko.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sko.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "sko.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The JWKS server image: its own repository/tag when set, else the operator image (same package). */}}
{{- define "sko.jwks.image" -}}
{{- $j := .Values.jwksServer.image -}}
{{- if or $j.repository $j.tag -}}
{{- printf "%s:%s" (default .Values.image.repository $j.repository) (default (default .Chart.AppVersion .Values.image.tag) $j.tag) -}}
{{- else -}}
{{- include "sko.image" . -}}
{{- end -}}
{{- end -}}

{{- define "sko.jwks.fullname" -}}
{{- printf "%s-jwks" (include "sko.fullname" .) -}}
{{- end -}}

{{- define "sko.jwks.namespace" -}}
{{- default .Release.Namespace .Values.jwksServer.namespace -}}
{{- end -}}

{{- define "sko.jwks.policy" -}}
{{- required "jwksServer.policy (the SigningKeyPolicy to serve) is required when jwksServer.enabled is true" .Values.jwksServer.policy -}}
{{- end -}}

{{- define "sko.jwks.configMapName" -}}
{{- default (printf "%s-jwks" (include "sko.jwks.policy" .)) .Values.jwksServer.configMapName -}}
{{- end -}}

{{- define "sko.jwks.revocationsConfigMapName" -}}
{{- default (printf "%s-revocations" (include "sko.jwks.policy" .)) .Values.jwksServer.revocations.configMapName -}}
{{- end -}}

{{- define "sko.jwks.serviceAccountName" -}}
{{- if .Values.jwksServer.serviceAccount.create -}}
{{- default (include "sko.jwks.fullname" .) .Values.jwksServer.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.jwksServer.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Rules the operator needs in every namespace it watches. Each one is used (see the comments);
the chart's tests run the operator with nothing but these and find no refusal in its log.
*/}}
{{- define "sko.namespacedRules" -}}
# Policies: kopf lists and watches them; the reconciler records handled request annotations
# with a merge patch guarded by resourceVersion; a TokenRevocation naming a policy the
# operator does not know yet is checked with a get. No create/update/delete: users own policies.
- apiGroups: ["signingkeys.dev"]
  resources: ["signingkeypolicies"]
  verbs: ["get", "list", "watch", "patch"]
# TokenRevocations: listed and watched, never changed (users own them; their spec is immutable).
- apiGroups: ["signingkeys.dev"]
  resources: ["tokenrevocations"]
  verbs: ["list", "watch"]
# Status is a view the reconciler rebuilds (merge patch on the status subresource).
- apiGroups: ["signingkeys.dev"]
  resources: ["signingkeypolicies/status", "tokenrevocations/status"]
  verbs: ["patch"]
# Key Secrets, the signing Secret, the JWKS and revocation ConfigMaps (and, with the Redis
# backend, the Secret named by passwordSecretRef, read only): created, replaced with
# resourceVersion guards and deleted by the reconciler; watched by kopf (drift and deletion
# wake the policy). RBAC cannot scope these verbs by label: the ValidatingAdmissionPolicy
# (admissionPolicy.enabled) limits writes to objects labelled signingkeys.dev/policy.
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
# Events on policies (kopf posts core/v1 Events; nothing uses events.k8s.io).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
