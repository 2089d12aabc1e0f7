{{/*
The objects every component has: Deployment, metrics Service, PodDisruptionBudget.
Context: dict "root" $ "component" "consumer"|"aggregator"|"console" "command" "run"|"aggregate"|"console".
*/}}

{{- define "eventmail.deployment" -}}
{{- $root := .root }}
{{- $values := index $root.Values .component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "eventmail.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "eventmail.componentLabels" . | nindent 4 }}
spec:
  {{- if not (and (eq .component "consumer") $values.autoscaling.enabled) }}
  replicas: {{ $values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "eventmail.selectorLabels" . | nindent 6 }}
  {{- with $values.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "eventmail.componentLabels" . | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- /* Roll the pods when the settings or the chart-managed credentials change. */}}
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if $root.Values.existingSecret }}
        checksum/secret: {{ $root.Values.existingSecret | sha256sum }}
        {{- else }}
        checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- end }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "eventmail.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ include "eventmail.terminationGracePeriodSeconds" $root }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "eventmail.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [{{ .command | quote }}]
          ports:
            - name: http
              containerPort: {{ $values.port }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "eventmail.configMapName" $root }}
            - secretRef:
                name: {{ include "eventmail.secretName" $root }}
            {{- if and (eq .component "console") $values.existingSecret }}
            - secretRef:
                name: {{ $values.existingSecret }}
            {{- end }}
            {{- with $values.extraEnvFrom }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            - name: EVENTMAIL_HTTP__PORT
              value: {{ $values.port | quote }}
            {{- if eq .component "console" }}
            - name: EVENTMAIL_CONSOLE__PORT
              value: {{ $values.port | quote }}
            - name: EVENTMAIL_CONSOLE__AUTH
              value: {{ $values.auth | quote }}
            - name: EVENTMAIL_CONSOLE__PROXY_HEADER
              value: {{ $values.proxy.header | quote }}
            - name: EVENTMAIL_CONSOLE__TRUSTED_PROXIES
              value: {{ toJson $values.proxy.trustedProxies | quote }}
            - name: EVENTMAIL_CONSOLE__EDITORS
              value: {{ toJson $values.proxy.editors | quote }}
            {{- end }}
            {{- with $values.kafkaCredentials }}
            {{- if .username }}
            - name: EVENTMAIL_KAFKA__SASL_USERNAME
              value: {{ .username | quote }}
            {{- end }}
            {{- if and .secretName .passwordKey }}
            - name: EVENTMAIL_KAFKA__SASL_PASSWORD_FILE
              value: {{ printf "%s/%s" (trimSuffix "/" .mountPath) .passwordKey | quote }}
            {{- end }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          livenessProbe:
            {{- toYaml $values.livenessProbe | nindent 12 }}
          readinessProbe:
            {{- toYaml $values.readinessProbe | nindent 12 }}
          {{- with $values.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with $values.kafkaCredentials }}
            {{- if .secretName }}
            - name: kafka-credentials
              mountPath: {{ .mountPath }}
              readOnly: true
            {{- end }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpSizeLimit }}
        {{- with $values.kafkaCredentials }}
        {{- if .secretName }}
        {{- /* Kafka credentials as files (SCRAM password, CA): never in the environment. */}}
        - name: kafka-credentials
          secret:
            secretName: {{ .secretName }}
            defaultMode: 0440
        {{- end }}
        {{- end }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{- define "eventmail.service" -}}
{{- $root := .root }}
{{- $values := index $root.Values .component }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "eventmail.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "eventmail.componentLabels" . | nindent 4 }}
  {{- with $values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $values.service.type }}
  selector:
    {{- include "eventmail.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ $values.port }}
      targetPort: http
      protocol: TCP
{{- end }}

{{- define "eventmail.podDisruptionBudget" -}}
{{- $root := .root }}
{{- $values := index $root.Values .component }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "eventmail.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "eventmail.componentLabels" . | nindent 4 }}
spec:
  {{- if hasKey $values.podDisruptionBudget "minAvailable" }}
  minAvailable: {{ $values.podDisruptionBudget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $values.podDisruptionBudget.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "eventmail.selectorLabels" . | nindent 6 }}
{{- end }}
