{{/* Names, labels and the merged settings of one service. */}}

{{- define "llmops.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llmops.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector labels of one component: (dict "root" $ "component" "feature") */}}
{{- define "llmops.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llmops.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "llmops.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "llmops.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{/* One service's settings: defaults, overridden by services.<name>. (dict "root" $ "name" "feature") */}}
{{- define "llmops.service" -}}
{{- $svc := index .root.Values.services .name -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $svc)) -}}
{{- end -}}

{{/* The mounts every mesh process has: config, TLS, tokens, registries, a writable state dir. */}}
{{- define "llmops.volumeMounts" -}}
- {name: config, mountPath: /etc/llmops/config, readOnly: true}
- {name: server-tls, mountPath: /etc/llmops/tls/server, readOnly: true}
- {name: client-tls, mountPath: /etc/llmops/tls/client, readOnly: true}
- {name: tokens, mountPath: /etc/llmops/tokens, readOnly: true}
{{- if .Values.registries.enabled }}
{{- range $kind := list "tasks" "inference" "features" "guardrails" "feedback" }}
- {name: {{ printf "registry-%s" $kind }}, mountPath: {{ printf "/etc/llmops/registries/%s" $kind }}, readOnly: true}
{{- end }}
{{- end }}
- {name: state, mountPath: /var/lib/llmops}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "llmops.volumes" -}}
{{- $full := include "llmops.fullname" . -}}
- name: config
  configMap: {name: {{ $full }}-config}
- name: server-tls
  secret: {secretName: {{ .Values.security.serverSecret }}, defaultMode: 0440}
- name: client-tls
  secret: {secretName: {{ .Values.security.clientSecret }}, defaultMode: 0440}
- name: tokens
  secret: {secretName: {{ .Values.security.tokensSecret }}, defaultMode: 0440}
{{- if .Values.registries.enabled }}
{{- range $kind := list "tasks" "inference" "features" "guardrails" "feedback" }}
- name: {{ printf "registry-%s" $kind }}
  configMap: {name: {{ printf "%s-registry-%s" $full $kind }}}
{{- end }}
{{- end }}
- name: state
  emptyDir: {}
- name: tmp
  emptyDir: {medium: Memory, sizeLimit: 512Mi}
{{- end -}}

{{/* Environment every mesh process has: the config file and the PostgreSQL DSNs. */}}
{{- define "llmops.env" -}}
- {name: LLMOPS_CONFIG, value: /etc/llmops/config/llmops.yaml}
- name: LLMOPS__GOVERNANCE__DSN
  valueFrom: {secretKeyRef: {name: {{ .Values.backends.postgres.governanceSecret }}, key: dsn}}
- name: LLMOPS__FEEDBACK__LABELS_DSN
  valueFrom: {secretKeyRef: {name: {{ .Values.backends.postgres.labelsSecret }}, key: dsn}}
{{- end -}}

{{/* grpc_health_probe over mutual TLS against one service: (dict "root" $ "port" 50051 "service" "llmops.v1.FeatureService") */}}
{{- define "llmops.healthProbe" -}}
exec:
  command:
    - grpc_health_probe
    - {{ printf "-addr=127.0.0.1:%v" .port }}
    - {{ printf "-service=%s" .service }}
    - -tls
    - -tls-ca-cert=/etc/llmops/tls/server/ca.crt
    - -tls-client-cert=/etc/llmops/tls/client/tls.crt
    - -tls-client-key=/etc/llmops/tls/client/tls.key
    {{- with .root.Values.security.tlsServerName }}
    - {{ printf "-tls-server-name=%s" . }}
    {{- else }}
    - {{ printf "-tls-server-name=%s-%s" (include "llmops.fullname" .root) .name }}
    {{- end }}
{{- end -}}
