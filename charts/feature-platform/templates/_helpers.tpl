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
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
{{- if .Values.airflow.apiUrl }}
- name: FEATURE_PLATFORM_AIRFLOW_URL
  value: {{ .Values.airflow.apiUrl | quote }}
{{- end }}
# Secrets are files (fp.secretsVolume), never environment variables: Settings reads each file of this
# directory as the variable it is named after.
- name: FEATURE_PLATFORM_SECRETS_DIR
  value: {{ include "fp.secretsDir" . }}
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

{{- define "fp.secretsDir" -}}
/var/run/secrets/feature-platform
{{- end -}}

{{/*
The platform's secrets as one projected volume, each key a file named after the variable it stands for.
Optional ones may be absent: an environment contract that needs them fails closed at start, by name.
*/}}
{{- define "fp.secretsVolume" -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ .Values.redis.passwordSecret.name }}
          items:
            - key: {{ .Values.redis.passwordSecret.key }}
              path: FEATURE_PLATFORM_REDIS_PASSWORD
      {{- if .Values.airflow.credentialsSecret }}
      # Only the proof needs them: the server starts (and serves) before this Secret exists.
      - secret:
          name: {{ .Values.airflow.credentialsSecret }}
          optional: true
          items:
            - {key: FEATURE_PLATFORM_AIRFLOW_USERNAME, path: FEATURE_PLATFORM_AIRFLOW_USERNAME}
            - {key: FEATURE_PLATFORM_AIRFLOW_PASSWORD, path: FEATURE_PLATFORM_AIRFLOW_PASSWORD}
      {{- end }}
      {{- if .Values.governance.secretName }}
      - secret:
          name: {{ .Values.governance.secretName }}
          optional: true
          items:
            - {key: FEATURE_PLATFORM_AUTH_KEY, path: FEATURE_PLATFORM_AUTH_KEY}
            - {key: FEATURE_PLATFORM_PII_KEY, path: FEATURE_PLATFORM_PII_KEY}
      {{- end }}
{{- end -}}
