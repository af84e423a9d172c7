{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "granite-speech.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "granite-speech.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "granite-speech.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "granite-speech.selectorLabels" -}}
app.kubernetes.io/name: {{ include "granite-speech.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "granite-speech.labels" -}}
helm.sh/chart: {{ include "granite-speech.chart" . }}
{{ include "granite-speech.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "granite-speech.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "granite-speech.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "granite-speech.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the API keys: the existing one, or the one the chart creates. */}}
{{- define "granite-speech.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "granite-speech.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "granite-speech.modelCacheClaim" -}}
{{- if eq .Values.modelCache.type "existingClaim" }}
{{- required "modelCache.existingClaim is required when modelCache.type is existingClaim" .Values.modelCache.existingClaim }}
{{- else }}
{{- printf "%s-model-cache" (include "granite-speech.fullname" .) }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the server's whole SIGTERM sequence (keep listening with
/ready at 503, then let in-flight requests finish) plus a margin for the engine to stop.
*/}}
{{- define "granite-speech.terminationGracePeriod" -}}
{{- $s := .Values.server }}
{{- add (ceil $s.shutdownDelaySeconds) (ceil $s.shutdownGraceSeconds) .Values.terminationGraceMarginSeconds | int }}
{{- end }}

{{/* PromQL label matchers for this release's pods, as a ServiceMonitor labels them. */}}
{{- define "granite-speech.metricSelector" -}}
{{- default (printf "namespace=%q,service=%q" .Release.Namespace (include "granite-speech.fullname" .)) .Values.keda.prometheus.metricSelector }}
{{- end }}

{{/* One GRANITE_SPEECH_* variable; nothing for null. Lists become comma-separated. */}}
{{- define "granite-speech.settingEnv" -}}
{{- $name := index . 0 }}
{{- $value := index . 1 }}
{{- if kindIs "slice" $value }}
{{- $value = ternary nil (join "," $value) (empty $value) }}
{{- end }}
{{- if not (kindIs "invalid" $value) -}}
- name: GRANITE_SPEECH_{{ $name | upper | replace "-" "_" }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
