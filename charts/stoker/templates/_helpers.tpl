{{/* Names, labels and the derived settings every template shares. */}}

{{- define "stoker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stoker.fullname" -}}
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

{{- define "stoker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stoker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stoker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stoker.labels" -}}
helm.sh/chart: {{ include "stoker.chart" . }}
{{ include "stoker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stoker
{{- end }}

{{- define "stoker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stoker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "stoker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Namespaces served in namespaced mode (JSON list; default: the release namespace). */}}
{{- define "stoker.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- toJson .Values.watch.namespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* "true" when kopf peering is on: more than one replica, or asked for. */}}
{{- define "stoker.peering" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.peering.enabled }}true{{ end }}
{{- end }}

{{- define "stoker.peeringName" -}}
{{- default (include "stoker.fullname" .) .Values.peering.name }}
{{- end }}

{{/* "true" when the rendezvous store runs in its own Deployment (the default; always with more than one operator replica). */}}
{{- define "stoker.separateStore" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.rendezvousStore.separate }}true{{ end }}
{{- end }}

{{/* A Service's address as the operator container sees it: the pinned ClusterIP, or the
     service environment variable Kubernetes injects (expanded by the kubelet in env values). */}}
{{- define "stoker.serviceHostRef" -}}
{{- $svc := index . 0 }}{{- $ip := index . 1 }}
{{- if $ip }}{{ $ip }}{{- else }}$({{ $svc | upper | replace "-" "_" }}_SERVICE_HOST){{- end }}
{{- end }}

{{- define "stoker.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "stoker.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}
