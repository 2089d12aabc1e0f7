{{/* Names, labels and shared pieces of the eventmail chart. */}}

{{/* The chart name (app.kubernetes.io/name). */}}
{{- define "eventmail.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: <release>-<chart>, or the release name alone when it already contains the chart
name. Truncated to 63 characters (DNS label); component suffixes are added on top, so keep it
short enough for "<fullname>-aggregator".
*/}}
{{- define "eventmail.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version for the helm.sh/chart label. */}}
{{- define "eventmail.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "eventmail.labels" -}}
helm.sh/chart: {{ include "eventmail.chart" . }}
app.kubernetes.io/name: {{ include "eventmail.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eventmail
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of a component. Context: dict "root" $ "component" "consumer"|"aggregator". */}}
{{- define "eventmail.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eventmail.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of a component's objects: the common labels plus its component label. Same context. */}}
{{- define "eventmail.componentLabels" -}}
{{ include "eventmail.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of a component's objects: <fullname>-<component>. Same context. */}}
{{- define "eventmail.componentName" -}}
{{- printf "%s-%s" (include "eventmail.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ServiceAccount both components run as. */}}
{{- define "eventmail.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eventmail.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "eventmail.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret the pods read EVENTMAIL_* credentials from. */}}
{{- define "eventmail.secretName" -}}
{{- default (printf "%s-secret" (include "eventmail.fullname" .)) .Values.existingSecret }}
{{- end }}

{{- define "eventmail.configMapName" -}}
{{- printf "%s-config" (include "eventmail.fullname" .) }}
{{- end }}

{{/*
Settings as environment variables: a map shaped like the Settings model becomes
EVENTMAIL_<FIELD> / EVENTMAIL_<GROUP>__<FIELD> entries (YAML "KEY: value" lines, values quoted).
Top-level fields that are maps in the model (users, esp_connections, secrets) and any nested map or
list are JSON; a null is left out. Numbers go through toJson so that large integers keep their
digits (no 1e+06).
*/}}
{{- define "eventmail.settingsEnv" -}}
{{- $jsonFields := list "users" "esp_connections" "secrets" }}
{{- range $field, $value := . }}
{{- if kindIs "invalid" $value }}
{{- else if or (has $field $jsonFields) (kindIs "slice" $value) }}
{{ printf "EVENTMAIL_%s" (upper $field) }}: {{ toJson $value | quote }}
{{- else if kindIs "map" $value }}
{{- range $key, $inner := $value }}
{{- if kindIs "invalid" $inner }}
{{- else if kindIs "string" $inner }}
{{ printf "EVENTMAIL_%s__%s" (upper $field) (upper $key) }}: {{ $inner | quote }}
{{- else }}
{{ printf "EVENTMAIL_%s__%s" (upper $field) (upper $key) }}: {{ toJson $inner | quote }}
{{- end }}
{{- end }}
{{- else if kindIs "string" $value }}
{{ printf "EVENTMAIL_%s" (upper $field) }}: {{ $value | quote }}
{{- else }}
{{ printf "EVENTMAIL_%s" (upper $field) }}: {{ toJson $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the drain timeout (EVENTMAIL_PIPELINE__DRAIN_TIMEOUT_SECONDS,
default 25) rounded up, plus the margin for flushing outcomes, the last commit and leaving the group.
*/}}
{{- define "eventmail.terminationGracePeriodSeconds" -}}
{{- $drain := 25 }}
{{- with .Values.config.pipeline }}
{{- if hasKey . "drain_timeout_seconds" }}
{{- if not (kindIs "invalid" .drain_timeout_seconds) }}
{{- $drain = .drain_timeout_seconds }}
{{- end }}
{{- end }}
{{- end }}
{{- add (ceil (float64 $drain) | int64) (int64 .Values.terminationGracePeriodMarginSeconds) }}
{{- end }}
