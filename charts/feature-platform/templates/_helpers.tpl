{{/* Every name comes from here. */}}
{{- define "fp.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fp.contractsConfigMap" -}}
{{- printf "%s-contracts" (include "fp.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fp.serviceAccountName" -}}
{{- default (include "fp.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "fp.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fp.labels" -}}
{{ include "fp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: feature-platform
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
feature-platform.io/environment: {{ .Values.environment.name }}
{{- end -}}

{{/* Immutable image reference: digest when given, else a tag that is not "latest" (schema-checked). */}}
{{- define "fp.image" -}}
{{- if and .Values.image.requireDigest (not .Values.image.digest) -}}
{{- fail (printf "environment %s runs images by digest only: set image.digest (scripts/pin-prod-images sets it for the server and the DAG step pods together)" .Values.environment.name) -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ required "image.tag or image.digest is required" .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* Impossible combinations fail at render time, with the fix in the message. */}}
{{- define "fp.validate" -}}
{{- $env := required "environment.name is required: use -f values-dev.yaml or -f values-prod.yaml" .Values.environment.name -}}
{{- $ns := required "environment.namespace is required (the namespace this environment owns)" .Values.environment.namespace -}}
{{- if ne $ns .Release.Namespace -}}
{{- fail (printf "environment %s must be installed into namespace %s, not %s: pass --namespace %s" $env $ns .Release.Namespace $ns) -}}
{{- end -}}
{{- if not (.Files.Get (printf "contracts/environments/%s.yaml" $env)) -}}
{{- fail (printf "no contract contracts/environments/%s.yaml: environment.name must name an environment contract" $env) -}}
{{- end -}}
{{- $_ := required "redis.address is required (host:port of this environment's Redis)" .Values.redis.address -}}
{{- $_ := required "redis.passwordSecret.name is required: the Redis password comes from a Secret, never from values" .Values.redis.passwordSecret.name -}}
{{- if and .Values.featureServer.autoscaling.enabled (gt (int .Values.featureServer.autoscaling.minReplicas) (int .Values.featureServer.autoscaling.maxReplicas)) -}}
{{- fail "featureServer.autoscaling.minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- end -}}

{{/* The environment every platform pod gets: where the contracts are, which environment, where Redis is. */}}
{{- define "fp.env" -}}
- name: FEATURE_PLATFORM_ENV
  value: {{ .Values.environment.name | quote }}
- name: FEATURE_PLATFORM_CONTRACTS
  value: {{ .Values.contracts.mountPath | quote }}
- name: FEATURE_PLATFORM_HOME
  value: /var/lib/feature-platform
- name: FEATURE_PLATFORM_CONTRACTS_COMMIT
  value: {{ .Values.contractsCommit | quote }}
- name: FEATURE_PLATFORM_REDIS_ADDRESS
  value: {{ .Values.redis.address | quote }}
- name: FEATURE_PLATFORM_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.passwordSecret.name }}
      key: {{ .Values.redis.passwordSecret.key }}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
{{- if .Values.airflow.apiUrl }}
- name: FEATURE_PLATFORM_AIRFLOW_URL
  value: {{ .Values.airflow.apiUrl | quote }}
{{- end }}
{{- if .Values.airflow.credentialsSecret }}
{{- range $key := list "FEATURE_PLATFORM_AIRFLOW_USERNAME" "FEATURE_PLATFORM_AIRFLOW_PASSWORD" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.airflow.credentialsSecret }}
      key: {{ $key }}
      # Only the proof needs it: the server starts (and serves) before the Secret exists.
      optional: true
{{- end }}
{{- end }}
{{- if .Values.governance.secretName }}
{{- range $key := list "FEATURE_PLATFORM_AUTH_KEY" "FEATURE_PLATFORM_PII_KEY" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.governance.secretName }}
      key: {{ $key }}
      # An environment contract that names the variable fails closed without it (the server refuses to start
      # where access.default is deny; exports refuse to write PII); an open dev may omit the token key.
      optional: true
{{- end }}
{{- end }}
{{- if .Values.s3.endpointUrl }}
- name: FEAST_S3_ENDPOINT_URL
  value: {{ .Values.s3.endpointUrl | quote }}
{{- end }}
{{- end -}}


{{/* imagePullSecrets of every pod. */}}
{{- define "fp.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
