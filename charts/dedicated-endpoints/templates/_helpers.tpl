{{/* Names, labels and shared fragments of the dedicated-endpoints chart. */}}

{{- define "de.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "de.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "de.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "de.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "de.selectorLabels" -}}
app.kubernetes.io/name: {{ include "de.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "de.labels" -}}
{{ include "de.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dedicated-endpoints
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "de.serviceAccountName" -}}
{{- default (include "de.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* An image reference from images.<which>: repository:tag, or repository@digest. */}}
{{- define "de.image" -}}
{{- $img := index .root.Values.images .which -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $img.tag -}}
{{- end -}}
{{- end -}}

{{- define "de.webhookServiceName" -}}
{{- printf "%s-webhook" (include "de.fullname" .) -}}
{{- end -}}

{{- define "de.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "de.fullname" .) -}}
{{- end -}}

{{/*
The admission webhooks the operator serves: one entry per kopf handler; the id is the URL path.
Must match dedicated.operator.handlers.admission.WEBHOOKS (a unit test renders the chart and
compares).
*/}}
{{- define "de.webhooks" -}}
- {id: validate-endpoint, type: validating, plural: dedicatedendpoints, subresource: "", operations: [CREATE, UPDATE], failurePolicy: Fail}
- {id: validate-endpoint-scale, type: validating, plural: dedicatedendpoints, subresource: scale, operations: [UPDATE], failurePolicy: Fail}
- {id: validate-quantizedmodel, type: validating, plural: quantizedmodels, subresource: "", operations: [CREATE, UPDATE], failurePolicy: Fail}
- {id: validate-gpuquota, type: validating, plural: gpuquotas, subresource: "", operations: [CREATE, UPDATE], failurePolicy: Fail}
- {id: mutate-endpoint-team, type: mutating, plural: dedicatedendpoints, subresource: "", operations: [CREATE, UPDATE], failurePolicy: Ignore}
- {id: mutate-quantizedmodel-team, type: mutating, plural: quantizedmodels, subresource: "", operations: [CREATE, UPDATE], failurePolicy: Ignore}
{{- end -}}

{{/*
The webhook serving certificate, generated once per render and reused on upgrades: an existing
Secret (from an earlier install) is looked up and kept, so the CA bundle in the webhook
configurations does not change under running API servers. Returns YAML {ca, crt, key} (base64).
*/}}
{{- define "de.webhookCerts" -}}
{{- if not .Values._webhookCerts -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "de.webhookSecretName" .) -}}
{{- $svc := include "de.webhookServiceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $ips := list -}}
{{- if .Values.webhook.url -}}
{{- $host := regexReplaceAll "^https://([^:/]+)(:[0-9]+)?$" .Values.webhook.url "${1}" -}}
{{- if regexMatch "^[0-9.]+$" $host -}}
{{- $ips = append $ips $host -}}
{{- else -}}
{{- $names = append $names $host -}}
{{- end -}}
{{- end -}}
{{- $wantSans := concat $names $ips | sortAlpha | join "," -}}
{{- if and $secret $secret.data (index $secret.data "ca.crt") (eq (index ($secret.metadata.annotations | default dict) "llm.dedicated.dev/sans" | default "") $wantSans) -}}
{{- $_ := set .Values "_webhookCerts" (dict "ca" (index $secret.data "ca.crt") "crt" (index $secret.data "tls.crt") "key" (index $secret.data "tls.key") "sans" $wantSans) -}}
{{- else -}}
{{- $days := int .Values.webhook.certificateValidityDays -}}
{{- $ca := genCA (printf "%s-webhook-ca" (include "de.fullname" .)) $days -}}
{{- $cert := genSignedCert $svc $ips $names $days $ca -}}
{{- $_ := set .Values "_webhookCerts" (dict "ca" ($ca.Cert | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "sans" $wantSans) -}}
{{- end -}}
{{- end -}}
{{- toYaml .Values._webhookCerts -}}
{{- end -}}
