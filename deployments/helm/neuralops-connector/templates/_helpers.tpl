{{- define "connector.labels" -}}
app.kubernetes.io/name: neuralops-connector
app.kubernetes.io/managed-by: neuralops
neuralops.io/cluster: {{ required "cluster is required" .Values.cluster | quote }}
{{- range $key, $value := .Values.labels }}
neuralops.io/{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end -}}
